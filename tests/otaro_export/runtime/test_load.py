import json

import pytest

from otaro_export.errors import ArtifactError
from otaro_export.manifest import Manifest
from otaro_export.runtime import load, load_tokenizer
from otaro_export.testing import tiny_tokenizer

MODEL = {"vocab_size": 259, "num_layers": 2, "num_kv_heads": 2, "head_dim": 16, "max_seq_len": 64, "eos_token_ids": []}


def write_manifest(directory, artifact="model.onnx", target="onnx", **overrides) -> Manifest:
    m = Manifest(
        target=target,
        artifact=artifact,
        kernels="portable",
        kernel_library=None,
        quantized_layers=[],
        inputs=[],
        outputs=[],
        model=dict(MODEL),
        **overrides,
    )
    m.save(directory, record_files=False)
    return m


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


def test_artifact_outside_the_directory_is_never_opened(tmp_path):
    (tmp_path / "outside.onnx").write_bytes(b"")
    directory = tmp_path / "artifact"
    directory.mkdir()
    write_manifest(directory, artifact="../outside.onnx")
    with pytest.raises(ArtifactError, match="outside the artifact directory"):
        load(directory)


def test_damaged_file_is_refused_before_any_runtime_sees_it(tmp_path, monkeypatch):
    (tmp_path / "model.pte").write_bytes(b"program")
    write_manifest(tmp_path, "model.pte", "executorch").save(tmp_path)  # records the digest of b"program"
    (tmp_path / "model.pte").write_bytes(b"programme"[:7] + b"!")
    monkeypatch.setattr("otaro_export.runtime.executorch_session.ExecuTorchSession", lambda *a: pytest.fail("ran"))
    with pytest.raises(ArtifactError, match="model.pte has 8 bytes, the manifest records 7"):
        load(tmp_path)
    (tmp_path / "model.pte").write_bytes(b"Program")
    with pytest.raises(ArtifactError, match="model.pte is damaged"):
        load(tmp_path)


@pytest.fixture
def tokenizer_dir(tmp_path):
    m = write_manifest(tmp_path)
    tiny_tokenizer().save_pretrained(str(tmp_path / "tokenizer"))
    return tmp_path, m


def test_tokenizer_loads(tokenizer_dir):
    directory, m = tokenizer_dir
    tok = load_tokenizer(directory, m)
    assert tok.decode(tok("hello")["input_ids"]) == "hello"


@pytest.mark.parametrize("config", ["tokenizer_config.json", "config.json"])
def test_tokenizer_asking_for_code_is_refused_and_the_code_never_runs(tokenizer_dir, config, tmp_path_factory):
    directory, m = tokenizer_dir
    marker = tmp_path_factory.mktemp("marker") / "ran"
    (directory / "tokenizer" / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "from transformers import PreTrainedTokenizerFast\nclass Evil(PreTrainedTokenizerFast): pass\n"
    )
    path = directory / "tokenizer" / config
    data = json.loads(path.read_text()) if path.exists() else {}
    data["auto_map"] = {"AutoTokenizer": ["evil.Evil", None]}
    path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="never runs code from an artifact") as info:
        load_tokenizer(directory, m)
    assert "evil.py" in str(info.value) and f"{config}: auto_map" in str(info.value)
    (directory / "tokenizer" / "evil.py").unlink()  # auto_map alone is refused too
    with pytest.raises(ArtifactError, match=f"{config}: auto_map"):
        load_tokenizer(directory, m)
    assert not marker.exists()


def test_broken_tokenizer_is_an_artifact_error(tokenizer_dir):
    directory, m = tokenizer_dir
    (directory / "tokenizer" / "tokenizer.json").write_text("{broken")
    with pytest.raises(ArtifactError, match="cannot load the tokenizer"):
        load_tokenizer(directory, m)


def test_no_tokenizer_directory_is_none(tmp_path):
    assert load_tokenizer(tmp_path, write_manifest(tmp_path)) is None
