import pytest

from otaro_export.bench.artifacts import ArtifactSpec, artifact_dir, model_key
from otaro_export.bench.configs import BenchSettings, quick_settings
from otaro_export.bench.runner import gguf_quant_type
from otaro_export.errors import OtaroError


def test_full_settings_measure_every_configuration():
    s = BenchSettings()
    s.validate()
    labels = [c.label for c in s.run_configs()]
    assert labels == [
        "onnx fused",
        "onnx portable (function)",
        "onnx fp32",
        "executorch fused",
        "executorch portable",
        "executorch fp32",
    ]
    # the ONNX function fallback reuses the fused file: 5 exports, not 6
    assert len(s.artifacts()) == 5


def test_quick_settings_are_smaller_and_keep_explicit_bits():
    q = quick_settings(BenchSettings())
    q.validate()
    assert q.bits == (3, 8) and not q.portable and q.new_tokens < 128 and q.quick
    assert [c.label for c in q.run_configs()] == ["onnx fused", "onnx fp32", "executorch fused", "executorch fp32"]
    assert quick_settings(BenchSettings(bits=(5,))).bits == (5,)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"bits": (9,)}, "9"),
        ({"targets": ("tflite",)}, "tflite"),
        ({"threads": 0}, "threads"),
        ({"new_tokens": 1}, "new-tokens"),
    ],
)
def test_bad_settings_are_clear_errors(change, message):
    with pytest.raises(OtaroError, match=message):
        BenchSettings(**change).validate()


def test_artifact_spec_and_cache_key(tmp_path):
    with pytest.raises(OtaroError, match="weights"):
        ArtifactSpec("onnx", "int4")
    (tmp_path / "m").mkdir()
    d = artifact_dir(ArtifactSpec("executorch", "sefp", "portable"), str(tmp_path / "m"), 128, tmp_path / "cache")
    assert d.parent == tmp_path / "cache" and d.name.endswith("executorch-sefp-portable-L128")
    assert artifact_dir(ArtifactSpec("onnx", "fp32"), str(tmp_path / "m"), 128, tmp_path).name.endswith(
        "onnx-fp32-L128"
    )
    with pytest.raises(OtaroError, match="no such file"):
        model_key(str(tmp_path / "missing"))


def test_gguf_quant_type_from_file_name(tmp_path):
    assert gguf_quant_type(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf") == "Q4_1"
    assert gguf_quant_type(tmp_path / "model-Q8_0.gguf") == "Q8_0"
    assert gguf_quant_type(tmp_path / "model.gguf") == "gguf"
