import pytest

from otaro_export.errors import ArtifactError
from otaro_export.manifest import Manifest
from otaro_export.runtime import load


def write_manifest(directory, artifact="model.onnx", target="onnx"):
    Manifest(
        target=target,
        artifact=artifact,
        kernels="portable",
        kernel_library=None,
        quantized_layers=[],
        inputs=[],
        outputs=[],
        model={},
    ).save(directory)


def test_missing_path(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "x.onnx")


def test_directory_without_manifest(tmp_path):
    with pytest.raises(ArtifactError, match="manifest.json"):
        load(tmp_path)


def test_manifest_names_missing_artifact(tmp_path):
    write_manifest(tmp_path)
    with pytest.raises(ArtifactError, match="missing"):
        load(tmp_path)


def test_file_is_not_the_manifest_artifact(tmp_path):
    write_manifest(tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "other.onnx").write_bytes(b"")
    with pytest.raises(ArtifactError, match="not the artifact"):
        load(tmp_path / "other.onnx")
