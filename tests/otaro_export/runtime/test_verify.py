"""``verify_artifact`` (``otaro verify``): every check runs, none trusts the verified-files cache."""

import json
import shutil

import numpy as np
import pytest

from otaro_export import integrity
from otaro_export.errors import ArtifactError, IntegrityError
from otaro_export.runtime import load
from otaro_export.runtime.verify import verify_artifact


@pytest.fixture
def artifact(tiny_onnx, tmp_path):
    source, _ = tiny_onnx("llama")
    shutil.copytree(source, tmp_path / "a")
    return tmp_path / "a"


def test_all_checks_pass_on_a_fresh_export(artifact):
    lines = []
    report = verify_artifact(artifact, log=lines.append)
    assert [name for name, _ in report.checks] == ["manifest", "files", "tokenizer", "run"]
    assert all(line.startswith("ok  ") for line in lines) and len(lines) == 4
    assert "precisions differ" in lines[-1]


def test_verify_rehashes_even_when_the_cache_would_vouch(artifact, monkeypatch):
    data = artifact / "model.onnx.data"
    damaged = bytearray(data.read_bytes())
    damaged[100] ^= 0x10
    data.write_bytes(bytes(damaged))
    manifest = json.loads((artifact / "manifest.json").read_text())
    recorded = {str(artifact / name): r["sha256"] for name, r in manifest["files"].items()}
    # a cache that (wrongly) vouches for every file: load trusts it, verify must not
    monkeypatch.setattr(integrity, "cached_digest", lambda path: recorded[str(path)])
    load(artifact, verify=True)
    with pytest.raises(IntegrityError, match="model.onnx.data is damaged"):
        verify_artifact(artifact, run=False)


def test_no_run_loads_no_runtime(artifact, monkeypatch):
    monkeypatch.setattr("otaro_export.runtime.load", lambda *a, **k: pytest.fail("loaded a runtime"))
    report = verify_artifact(artifact, run=False)
    assert [name for name, _ in report.checks] == ["manifest", "files", "tokenizer"]


def test_an_artifact_without_digests_cannot_be_verified(artifact):
    manifest = json.loads((artifact / "manifest.json").read_text())
    manifest["files"] = {}
    (artifact / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="records no file digests"):
        verify_artifact(artifact, run=False)


def test_run_finds_an_ignored_precision_input(artifact, monkeypatch):
    from otaro_export.runtime.onnx_session import OnnxSession

    step = OnnxSession._step
    monkeypatch.setattr(OnnxSession, "_step", lambda self, ids, pos, bits, **kw: step(self, ids, pos, 8, **kw))
    with pytest.raises(ArtifactError, match="E5M3 and E5M8 give identical logits"):
        verify_artifact(artifact)


def test_run_finds_a_broken_kv_cache(artifact, monkeypatch):
    from otaro_export.runtime.onnx_session import OnnxSession

    step = OnnxSession._step

    def forgetful(self, ids, pos, bits, **kw):
        out = step(self, ids, pos, bits, **kw)
        return out + np.float32(1.0) if ids.shape[1] == 1 and pos > 0 else out  # wrong only when decoding

    monkeypatch.setattr(OnnxSession, "_step", forgetful)
    with pytest.raises(ArtifactError, match="decoding token by token differs"):
        verify_artifact(artifact)
