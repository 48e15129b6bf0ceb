"""The bench's artifact cache (otaro_export/bench/artifacts.py)."""

import json
import time

from otaro_export.bench import artifacts
from otaro_export.bench.artifacts import (
    EXPORT_RECORD_NAME,
    ArtifactSpec,
    ExportTime,
    ensure_artifact_timed,
    is_complete,
)
from otaro_export.bench.runner import artifact_mib
from otaro_export.export.sefp_recipe import default_recipe


def test_a_cached_artifact_of_another_recipe_is_exported_again(tmp_path):
    """A default that changed since the cached export (e.g. int8 activations) must not be measured stale."""
    current = default_recipe().for_target("onnx").manifest_fields()
    manifest = {"target": "onnx", "inputs": ["input_ids"], "extra": {"sefp_recipe": current, "fused_swiglu": 2}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_complete(tmp_path)
    manifest["extra"]["sefp_recipe"] = {**current, "int8_activations": 0}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not is_complete(tmp_path)
    manifest["extra"] = {"weights": "fp32"}  # a float baseline records no recipe: nothing to compare
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_complete(tmp_path)


def test_a_cached_onnx_file_from_before_the_swiglu_fold_is_exported_again(tmp_path):
    """It still runs, with the MLP's Split / Sigmoid / Mul / Mul nodes the export no longer writes."""
    current = default_recipe().for_target("onnx").manifest_fields()
    extra = {"weights": "sefp", "sefp_recipe": current, "fused_swiglu": 30}
    manifest = {"target": "onnx", "inputs": ["input_ids"]}
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "extra": extra}))
    assert is_complete(tmp_path)
    del extra["fused_swiglu"]
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "extra": extra}))
    assert not is_complete(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "extra": {"weights": "fp32"}}))
    assert is_complete(tmp_path)  # the float baseline has no SEFP node to fold into


def test_a_cached_fused_pte_from_before_the_projects_attention_kernel_is_exported_again(tmp_path):
    """It still runs (llama::custom_sdpa), but the bench would time an attention users no longer get."""
    current = default_recipe().for_target("executorch").manifest_fields()
    extra = {"sefp_recipe": current, "attention": "llm-ops", "attention_kernel": "otaro_llm::kv_attention"}
    manifest = {"target": "executorch", "kernel_library": "executorch", "inputs": ["input_ids", "input_pos"]}
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "extra": extra}))
    assert is_complete(tmp_path)
    for older in ("otaro_llm::sdpa", None):  # a kernel of an earlier export, or none recorded
        extra["attention_kernel"] = older
        (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "extra": extra}))
        assert not is_complete(tmp_path)
    # an fp32 .pte keeps ExecuTorch's attention: its cache stays
    fp32 = {"target": "executorch", "kernel_library": None, "inputs": ["input_ids", "input_pos"]}
    (tmp_path / "manifest.json").write_text(json.dumps({**fp32, "extra": {"weights": "fp32", "attention": "llm-ops"}}))
    assert is_complete(tmp_path)


def _fake_export(seconds):
    def export_into(spec, model, max_seq_len, out, loaded, log):
        time.sleep(seconds)
        (out / "model.onnx").write_bytes(b"\0" * 1024)
        (out / "manifest.json").write_text(json.dumps({"target": spec.target, "inputs": ["input_ids"], "extra": {}}))

    return export_into


def test_the_export_time_is_kept_with_the_cached_artifact(tmp_path, monkeypatch):
    model = tmp_path / "model.gguf"
    model.write_bytes(b"gguf")
    monkeypatch.setattr(artifacts, "_export_into", _fake_export(0.2))
    spec = ArtifactSpec("onnx", "sefp", "fused")
    kwargs = {"root": tmp_path / "cache", "log": lambda _: None, "loaded_factory": lambda: None}
    directory, timed = ensure_artifact_timed(spec, str(model), 64, **kwargs)
    assert timed.cached is False and 0.2 <= timed.wall_s < 30 and timed.finished.endswith("UTC")
    assert len(timed.load_1min) == 2
    assert artifact_mib(directory) == 1024 / 2**20  # the record is not part of the artifact's size
    monkeypatch.setattr(artifacts, "_export_into", _fake_export(0.0))  # not called again: the cache serves it
    again_dir, again = ensure_artifact_timed(spec, str(model), 64, **kwargs)
    assert again_dir == directory and again.cached is True
    assert (again.wall_s, again.finished, again.load_1min) == (timed.wall_s, timed.finished, timed.load_1min)
    assert again.to_json()["cached"] is True and isinstance(again.to_json()["load_1min"], list)
    # a cache from before export times were recorded (or an unreadable record): served, time unknown
    (directory / EXPORT_RECORD_NAME).write_text("{not json")
    assert ensure_artifact_timed(spec, str(model), 64, **kwargs)[1] == ExportTime(None, cached=True)
    (directory / EXPORT_RECORD_NAME).unlink()
    assert ensure_artifact_timed(spec, str(model), 64, **kwargs)[1] == ExportTime(None, cached=True)
    assert is_complete(directory)
