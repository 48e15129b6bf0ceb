import json

import pytest

from otaro_export.errors import ArtifactError
from otaro_export.manifest import Manifest


def make():
    return Manifest(
        target="onnx",
        artifact="model.onnx",
        kernels="fused",
        kernel_library="onnxruntime",
        quantized_layers=["model.layers.0.mlp.up_proj"],
        inputs=["input_ids", "bits"],
        outputs=["logits"],
        model={"vocab_size": 259},
    )


def test_round_trip(tmp_path):
    m = make()
    m.save(tmp_path)
    back = Manifest.load(tmp_path)
    assert back == m and back.precisions == [3, 4, 5, 6, 7, 8]
    assert back.sefp["group_size"] == 64 and back.sefp["bits_per_weight_at_rest"] == 9.125


def test_missing(tmp_path):
    with pytest.raises(ArtifactError, match="no manifest.json"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize(
    "text,match",
    [
        ("{not json", "not valid JSON"),
        ("[]", "JSON object"),
        ('{"format_version": 99}', "version 99"),
        ('{"format_version": 1}', "missing field"),
    ],
)
def test_corrupt(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match=match):
        Manifest.load(tmp_path)


def test_unknown_target(tmp_path):
    m = make()
    m.save(tmp_path)
    data = json.loads((tmp_path / "manifest.json").read_text())
    data["target"] = "tflite"
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="tflite"):
        Manifest.load(tmp_path)
