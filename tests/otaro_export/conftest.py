import pytest

from otaro_export.testing import tiny_onnx_artifact


@pytest.fixture(scope="session")
def onnx_root(tmp_path_factory):
    # getbasetemp() is shared by the whole pytest run, so every test directory reuses these exports
    return tmp_path_factory.getbasetemp() / "tiny-onnx"


@pytest.fixture(scope="session")
def tiny_onnx(onnx_root):
    """``tiny_onnx(model_type, kernels="fused") -> (directory, loaded)``: a cached tiny ONNX export."""
    return lambda model_type, kernels="fused": tiny_onnx_artifact(model_type, onnx_root, kernels)
