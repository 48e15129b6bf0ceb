import copy
import json
import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otaro_export.errors import ArtifactError, IntegrityError, OtaroError
from otaro_export.manifest import Manifest
from otaro_export.runtime import load, load_tokenizer
from otaro_export.testing import tiny_executorch_artifact, tiny_onnx_artifact, tiny_tokenizer

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


# -- fuzzing: a damaged or edited artifact is a clean error or the correct answer, never a crash or a wrong one --
# Each example loads a real (tiny) artifact, so examples are few; hypothesis keeps the failing ones in its database.

# A few seconds per test; OTARO_FUZZ_EXAMPLES=500 for a deeper campaign.
FUZZ = settings(
    max_examples=int(os.environ.get("OTARO_FUZZ_EXAMPLES", "20")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
IDS = np.array([[5, 17, 100, 3, 250, 9]], dtype=np.int64)
PROMPT = [5, 17, 100]


def _run(directory):
    """What a user gets: every check passed and the answers, or the clean error (any other exception fails)."""
    try:
        s = load(directory)
        return s.forward(IDS, 3), s.forward(IDS, 8), s.generate_ids(PROMPT, 8, 5, stop_at_eos=False)
    except OtaroError as exc:
        return exc


def _same(got, reference) -> bool:
    # portable and fused kernels may differ by float32 summation order; a wrong answer differs by far more
    return (
        np.allclose(got[0], reference[0], rtol=1e-4, atol=1e-4)
        and np.allclose(got[1], reference[1], rtol=1e-4, atol=1e-4)
        and got[2] == reference[2]
    )


class Fuzzed:
    """A private copy of a tiny artifact; ``restore()`` undoes any damage between examples."""

    def __init__(self, source, directory):
        shutil.copytree(source, directory)
        self.dir = directory
        self.pristine = {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}
        self.manifest = json.loads((directory / "manifest.json").read_text())
        self.reference = _run(directory)
        assert not isinstance(self.reference, Exception), self.reference

    def restore(self):
        for path, data in self.pristine.items():
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)


@pytest.fixture(scope="module", params=["onnx", "executorch"])
def fuzzed(request, tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    if request.param == "onnx":
        source, _ = tiny_onnx_artifact("llama", base / "tiny-onnx")
    else:
        source, _ = tiny_executorch_artifact(base / "tiny-executorch")
    return Fuzzed(source, tmp_path_factory.mktemp(f"fuzz-{request.param}") / "artifact")


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _paths(data, prefix=()):
    """Every key path of the manifest, nested ones too (model.vocab_size, extra.data_files, files.<name>...)."""
    for key, value in data.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


def _plausible(value):
    """Edits a person or a bit flip might make: near numbers, other names of this project, shorter lists."""
    options = [
        _json,
        st.sampled_from(
            [
                "onnx",
                "executorch",
                "fused",
                "portable",
                "model.pte",
                "model.onnx",
                "tokenizer",
                "../model.onnx",
                "/etc/passwd",
                "",
                "onnxruntime",
            ]
        ),
    ]
    if isinstance(value, int) and not isinstance(value, bool):
        options.append(st.integers(-3, 3).map(lambda d: value + d) | st.sampled_from([0, 1, 2 * value, 2**31]))
    if isinstance(value, list) and value:
        options.append(st.integers(0, len(value) - 1).map(lambda i: value[:i] + value[i + 1 :]))
        options.append(st.just(value + value[:1]))
    return st.one_of(options)


@st.composite
def _manifest_edit(draw, manifest):
    path = draw(st.sampled_from(sorted(_paths(manifest))))
    target = copy.deepcopy(manifest)
    parent = target
    for key in path[:-1]:
        parent = parent[key]
    if draw(st.integers(0, 5)) == 0:
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(_plausible(parent[path[-1]]))
    return path, target


def test_fuzz_manifest_fields(fuzzed):
    @FUZZ
    @given(edit=_manifest_edit(fuzzed.manifest))
    def check(edit):
        path, data = edit
        fuzzed.restore()
        (fuzzed.dir / "manifest.json").write_text(json.dumps(data))
        got = _run(fuzzed.dir)
        assert isinstance(got, OtaroError) or _same(got, fuzzed.reference), f"{'.'.join(path)} edited: wrong answer"

    check()


def test_fuzz_manifest_bytes(fuzzed):
    fuzzed.restore()
    text = (fuzzed.dir / "manifest.json").read_bytes()

    @FUZZ
    @given(offset=st.integers(0, len(text) - 1), data=st.binary(min_size=0, max_size=4), cut=st.booleans())
    def check(offset, data, cut):
        fuzzed.restore()
        damaged = text[:offset] + data + (b"" if cut else text[offset + len(data) :])
        (fuzzed.dir / "manifest.json").write_bytes(damaged)
        got = _run(fuzzed.dir)
        assert isinstance(got, OtaroError) or _same(got, fuzzed.reference), damaged[offset - 20 : offset + 20]

    check()


def test_fuzz_artifact_bytes_are_always_caught(fuzzed):
    """Any change to a recorded file (model, weights, tokenizer) is an IntegrityError at load, before it runs."""
    fuzzed.restore()
    files = sorted(Manifest.load(fuzzed.dir).files)

    @FUZZ
    @given(
        name=st.sampled_from(files),
        where=st.floats(0, 1),
        data=st.binary(min_size=1, max_size=8),
        mode=st.sampled_from(["overwrite", "truncate", "append"]),
    )
    def check(name, where, data, mode):
        fuzzed.restore()
        path = fuzzed.dir / name
        original = path.read_bytes()
        at = min(int(where * len(original)), len(original) - 1)
        if mode == "overwrite":  # same size, every overwritten byte changed
            flipped = bytes(o ^ (b | 1) for o, b in zip(original[at:], data))
            damaged = original[:at] + flipped + original[at + len(flipped) :]
        elif mode == "truncate":
            damaged = original[:at]
        else:
            damaged = original + data
        if damaged == original:
            return
        path.write_bytes(damaged)
        with pytest.raises(IntegrityError, match=name.split("/")[-1]):
            load(fuzzed.dir)

    check()
