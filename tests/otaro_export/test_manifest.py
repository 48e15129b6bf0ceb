import hashlib
import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from otaro_export import integrity
from otaro_export.errors import ArtifactError, IntegrityError, OtaroWarning
from otaro_export.manifest import FORMAT_VERSION, Manifest


def make(**overrides):
    fields = dict(
        target="onnx",
        artifact="model.onnx",
        kernels="fused",
        kernel_library="onnxruntime",
        quantized_layers=["model.layers.0.mlp.up_proj"],
        inputs=["input_ids", "bits"],
        outputs=["logits"],
        model={
            "vocab_size": 259,
            "num_layers": 2,
            "num_kv_heads": 2,
            "head_dim": 16,
            "max_seq_len": 64,
            "eos_token_ids": [256],
        },
    )
    fields.update(overrides)
    return Manifest(**fields)


def write_json(directory, data):
    (directory / "manifest.json").write_text(json.dumps(data))


def saved(tmp_path, **overrides) -> dict:
    make(**overrides).save(tmp_path, record_files=False)
    return json.loads((tmp_path / "manifest.json").read_text())


def test_round_trip(tmp_path):
    m = make()
    m.save(tmp_path, record_files=False)
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
        (json.dumps({"format_version": FORMAT_VERSION}), "missing field"),
    ],
)
def test_corrupt(tmp_path, text, match):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ArtifactError, match=match):
        Manifest.load(tmp_path)


# (dotted field, bad value, words the error must contain)
BAD_FIELDS = [
    ("target", "tflite", "unknown target 'tflite'"),
    ("artifact", 3, "artifact must be a string"),
    ("artifact", "model.pte", "artifact must be a .onnx file"),
    ("kernels", "turbo", "kernels must be one of"),
    ("kernel_library", "libevil.so", "kernel_library must be one of"),
    ("kernel_library", "executorch", "kernel_library must be one of"),  # the other target's library
    ("quantized_layers", "all", "quantized_layers must be a list of strings"),
    ("inputs", [1], "inputs must be a list of strings"),
    ("model", [], "model must be a JSON object"),
    ("model.vocab_size", "259", "model.vocab_size must be a positive integer"),
    ("model.vocab_size", True, "model.vocab_size must be a positive integer"),
    ("model.max_seq_len", 1, "model.max_seq_len must be an integer >= 2"),
    ("model.max_seq_len", None, "model.max_seq_len must be an integer >= 2"),
    ("model.num_kv_heads", 0, "model.num_kv_heads must be a positive integer"),
    ("model.head_dim", 16.0, "model.head_dim must be a positive integer"),
    ("model.eos_token_ids", 256, "model.eos_token_ids must be a list"),
    ("model.eos_token_ids", [999], "ids below model.vocab_size"),
    ("model.head_dim", 2**31, "implausible (a 4096 GiB KV cache"),
    ("model.max_seq_len", 10**9, "KV cache"),
    ("model.vocab_size", 2**30, "implausible"),
    ("precisions", [], "precisions must be a non-empty list"),
    ("precisions", [3, 3], "precisions must be a non-empty list of distinct"),
    ("precisions", [9], "precisions must be"),
    ("precisions", [True], "precisions must be"),
    ("extra", None, "extra must be a JSON object"),
    ("extra.data_files", "model.ptd", "extra.data_files must be a list"),
    ("files", {"model.onnx": {"size": 1, "sha256": "xyz"}}, "files"),
    ("files", {"model.onnx": {"size": -1, "sha256": "0" * 64}}, "files"),
]


def _set(data: dict, dotted: str, value):
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


@pytest.mark.parametrize("field,value,match", BAD_FIELDS)
def test_every_field_is_checked(tmp_path, field, value, match):
    data = saved(tmp_path)
    _set(data, field, value)
    write_json(tmp_path, data)
    with pytest.raises(ArtifactError) as info:
        Manifest.load(tmp_path)
    assert match in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "field,value",
    [
        ("artifact", "/etc/passwd.onnx"),
        ("artifact", "../model.onnx"),
        ("artifact", "sub/../../model.onnx"),
        ("tokenizer", "/usr/share"),
        ("tokenizer", ".."),
        ("tokenizer", "."),
        ("extra.data_files", ["../weights.bin"]),
        ("files", {"../../x": {"size": 1, "sha256": "0" * 64}}),
    ],
)
def test_paths_stay_inside_the_artifact_directory(tmp_path, field, value):
    directory = tmp_path / "artifact"
    directory.mkdir()
    data = saved(directory)
    _set(data, field, value)
    write_json(directory, data)
    with pytest.raises(ArtifactError, match="absolute path|outside the artifact directory"):
        Manifest.load(directory)


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    directory = tmp_path / "artifact"
    directory.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", directory / "tokenizer")
    saved(directory)
    with pytest.raises(ArtifactError, match="outside the artifact directory"):
        Manifest.load(directory)
    os.symlink(directory / "real.onnx", directory / "model.onnx")  # a link that stays inside is fine
    data = saved(directory, tokenizer="tok")
    write_json(directory, data)
    Manifest.load(directory)


def _tiny_onnx_with_external_data(directory):
    """A one-node graph whose weight lives in weights.bin beside it, like an exported model.onnx."""
    weight = numpy_helper.from_array(np.arange(2048, dtype=np.float32).reshape(32, 64), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [weight],
    )
    model = helper.make_model(graph)
    onnx.save(
        model, str(directory / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=0
    )


@pytest.fixture
def recorded(tmp_path):
    _tiny_onnx_with_external_data(tmp_path)
    (tmp_path / "tokenizer" / "sub").mkdir(parents=True)
    (tmp_path / "tokenizer" / "tokenizer.json").write_text('{"a": 1}')
    (tmp_path / "tokenizer" / "sub" / "extra.txt").write_text("x")
    make().save(tmp_path)
    return tmp_path


def test_save_records_every_file_of_the_artifact(recorded):
    m = Manifest.load(recorded)
    assert sorted(m.files) == ["model.onnx", "tokenizer/sub/extra.txt", "tokenizer/tokenizer.json", "weights.bin"]
    for name, record in m.files.items():
        data = (recorded / name).read_bytes()
        assert record == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert m.verify_files(recorded) == list(m.files)


def test_damage_of_the_same_size_is_found(recorded):
    m = Manifest.load(recorded)
    assert m.verify_files(recorded)
    with open(recorded / "weights.bin", "r+b") as f:
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0x40]))
    with pytest.raises(IntegrityError, match="weights.bin is damaged"):
        m.verify_files(recorded)


def test_truncated_and_missing_files_are_found(recorded):
    m = Manifest.load(recorded)
    (recorded / "tokenizer" / "tokenizer.json").write_text("{}")
    with pytest.raises(IntegrityError, match="tokenizer.json has 2 bytes, the manifest records 8"):
        m.verify_files(recorded)
    (recorded / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(IntegrityError, match="tokenizer.json is missing"):
        m.verify_files(recorded)


def test_artifact_without_a_recorded_digest_is_refused(recorded):
    data = json.loads((recorded / "manifest.json").read_text())
    del data["files"]["weights.bin"], data["files"]["model.onnx"]
    write_json(recorded, data)
    with pytest.raises(ArtifactError, match=r"records no digest for \['model.onnx'\]"):
        Manifest.load(recorded).verify_files(recorded)


def test_manifest_without_digests_loads_with_a_warning(recorded):
    data = json.loads((recorded / "manifest.json").read_text())
    data["files"] = {}
    write_json(recorded, data)
    with pytest.warns(OtaroWarning, match="records no file digests"):
        assert Manifest.load(recorded).verify_files(recorded) == []


def test_unchanged_files_are_not_hashed_again(recorded, monkeypatch):
    m = Manifest.load(recorded)
    m.verify_files(recorded)
    monkeypatch.setattr(integrity, "file_digest", lambda *a, **k: pytest.fail("hashed a cached file"))
    m.verify_files(recorded)  # every file answered from the cache
    assert m.verify_files(recorded, use_cache=True)
    with pytest.raises(pytest.fail.Exception):
        m.verify_files(recorded, use_cache=False)


def test_bytes_that_are_not_utf8(tmp_path):
    (tmp_path / "manifest.json").write_bytes(b'\x80{"target": "onnx"}')
    with pytest.raises(ArtifactError, match="not valid JSON"):
        Manifest.load(tmp_path)


@pytest.mark.parametrize("field", ["target", "artifact", "kernels", "kernel_library", "model", "inputs"])
def test_missing_required_field(tmp_path, field):
    data = saved(tmp_path)
    del data[field]
    write_json(tmp_path, data)
    with pytest.raises(ArtifactError, match=rf"missing field\(s\) \['{field}'\]"):
        Manifest.load(tmp_path)
