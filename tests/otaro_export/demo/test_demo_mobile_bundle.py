"""Mobile bundles (otaro_export.demo.mobile_bundle) and the apps' engine that runs them (examples/mobile/bundle_runner.py).

The I/O description is checked on fake onnxruntime sessions; the runner is checked against
``otaro_export.runtime`` on a tiny ONNX export (step by step, then the demo's tasks at E5M3 and E5M8).
"""

import json
import runpy
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from otaro_export.demo.mobile_bundle import BUNDLE_NAME, FORMAT_VERSION, describe_io
from otaro_export.demo.token_bytes import token_bytes_table
from otaro_export.demo.toml_io import DemoConfigError
from otaro_export.testing import tiny_tokenizer

REPO = Path(__file__).resolve().parents[3]
MAX_SEQ_LEN = 256  # the built-in prompts are <= 190 byte-level tokens with the chat template


def fake_ort(inputs: dict, outputs: list):
    return SimpleNamespace(
        get_inputs=lambda: [SimpleNamespace(name=n, type=t, shape=s) for n, (t, s) in inputs.items()],
        get_outputs=lambda: [SimpleNamespace(name=n) for n in outputs],
    )


MANIFEST = SimpleNamespace(model={"num_kv_heads": 2, "head_dim": 16, "max_seq_len": 64})
STEP = {
    "input_ids": ("tensor(int64)", [1, "s"]),
    "bits": ("tensor(int64)", []),
    "seqlens_k": ("tensor(int32)", [1]),
    "total_sequence_length": ("tensor(int32)", []),
    "logits_positions": ("tensor(int64)", ["p"]),
}
CACHE = {f"past_{kv}_{i}": ("tensor(float)", [1, 2, 64, 16]) for i in range(2) for kv in ("key", "value")}
PRESENTS = [f"present_{kv}_{i}" for i in range(2) for kv in ("key", "value")]


def test_roles_and_cache_pairs():
    # presents listed in another order than the pasts: paired by name
    io = describe_io(fake_ort({**STEP, **CACHE}, ["logits", *reversed(PRESENTS)]), MANIFEST)
    assert {k: io[k] for k in STEP} == {k: k for k in STEP} and io["logits"] == "logits"
    assert [(c["input"], c["output"], c["shape"]) for c in io["cache"]] == [
        (f"past_{kv}_{i}", f"present_{kv}_{i}", [1, 2, 64, 16]) for i in range(2) for kv in ("key", "value")
    ]


@pytest.mark.parametrize("missing", list(STEP))
def test_a_graph_without_a_step_input_is_an_error(missing):
    inputs = {k: v for k, v in {**STEP, **CACHE}.items() if k != missing}
    with pytest.raises(DemoConfigError, match=rf"FORMAT.md §8\): it has no input '{missing}'"):
        describe_io(fake_ort(inputs, ["logits", *PRESENTS]), MANIFEST)


def test_a_step_input_of_another_dtype_is_an_error():
    inputs = {**STEP, "seqlens_k": ("tensor(int64)", [1]), **CACHE}
    with pytest.raises(DemoConfigError, match="input 'seqlens_k' is tensor\\(int64\\), not tensor\\(int32\\)"):
        describe_io(fake_ort(inputs, ["logits", *PRESENTS]), MANIFEST)


def test_the_previous_graph_with_position_ids_is_an_error():
    old = {"input_ids": ("tensor(int64)", [1, "s"]), "position_ids": ("tensor(int64)", [1, "s"])}
    with pytest.raises(DemoConfigError, match="re-export it with this otaro-export"):
        describe_io(fake_ort({**old, "bits": ("tensor(int64)", []), **CACHE}, ["logits", *PRESENTS]), MANIFEST)


def test_unpaired_cache_is_an_error():
    with pytest.raises(DemoConfigError, match="cannot pair KV-cache inputs"):
        describe_io(fake_ort({**STEP, **CACHE}, ["logits", *PRESENTS[:-1]]), MANIFEST)
    with pytest.raises(DemoConfigError, match="cannot pair KV-cache inputs"):
        describe_io(fake_ort({**STEP, **CACHE}, ["logits", *PRESENTS[:-1], "present_key_7"]), MANIFEST)


def test_a_cache_shape_other_than_the_manifest_is_an_error():
    cache = {**CACHE, "past_key_1": ("tensor(float)", [1, 2, 128, 16])}
    with pytest.raises(DemoConfigError, match="'past_key_1' has shape \\[1, 2, 128, 16\\], the manifest says"):
        describe_io(fake_ort({**STEP, **cache}, ["logits", *PRESENTS]), MANIFEST)


def test_token_bytes_detokenize_like_the_tokenizer():
    tok = tiny_tokenizer()
    table = token_bytes_table(tok)
    text = "Héllo wörld — 日本 ✓\n<|im_end|>ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids).decode("utf-8") == tok.decode(ids, skip_special_tokens=True)
    assert all(table[i] == b"" for i in tok.all_special_ids)


def test_bundles_are_onnx_only(fake_session, tmp_path):
    from otaro_export.demo import load_policy, load_tasks
    from otaro_export.demo.mobile_bundle import write_mobile_bundle

    session = fake_session()
    session.manifest.target = "executorch"
    with pytest.raises(DemoConfigError, match="built from ONNX artifacts"):
        write_mobile_bundle(session, load_policy(), load_tasks(), tmp_path)
    assert not any(tmp_path.iterdir())


def test_a_task_longer_than_the_cache_is_refused_before_anything_is_written(fake_session, tmp_path):
    from otaro_export.demo import load_policy, load_tasks
    from otaro_export.demo.mobile_bundle import write_mobile_bundle

    with pytest.raises(DemoConfigError, match="max_seq_len is 32"):
        write_mobile_bundle(fake_session(max_seq_len=32), load_policy(), load_tasks(), tmp_path / "b")
    assert not (tmp_path / "b").exists()


# -- the runner against otaro_export.runtime, on a tiny export ------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny ONNX export, its runtime session (fused kernels) and its mobile bundle (default policy and tasks)."""
    from otaro_export import runtime
    from otaro_export.demo import load_policy, load_tasks
    from otaro_export.demo.mobile_bundle import write_mobile_bundle
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.testing import tiny_causal_lm

    root = tmp_path_factory.mktemp("mobile_bundle")
    options = ExportOptions(target="onnx", output=root / "onnx", max_seq_len=MAX_SEQ_LEN)
    export_model(options, log=lambda _: None, loaded=tiny_causal_lm())
    session = runtime.load(root / "onnx")
    assert session.use_library  # the runtime side runs the fused kernels
    write_mobile_bundle(session, load_policy(), load_tasks(), root / "bundle")
    return SimpleNamespace(session=session, bundle=root / "bundle")


@pytest.fixture(scope="module")
def runner():
    return runpy.run_path(str(REPO / "examples" / "mobile" / "bundle_runner.py"))


def _library(kernels: str):
    from otaro_export.runtime_ops import ort_library

    return str(ort_library.library_path()) if kernels == "fused" else None


def test_bundle_describes_the_exported_graph(exported):
    bundle = json.loads((exported.bundle / BUNDLE_NAME).read_text())
    assert bundle["format_version"] == FORMAT_VERSION == 2
    assert bundle["model_files"] == ["model.onnx", "model.onnx.data"]
    assert all((exported.bundle / name).is_file() for name in bundle["model_files"])
    model = exported.session.manifest.model
    assert bundle["max_seq_len"] == model["max_seq_len"] == MAX_SEQ_LEN
    assert [c["input"] for c in bundle["io"]["cache"]] == [
        f"past_{kv}_{i}" for i in range(model["num_layers"]) for kv in ("key", "value")
    ]
    assert {tuple(c["shape"]) for c in bundle["io"]["cache"]} == {
        (1, model["num_kv_heads"], MAX_SEQ_LEN, model["head_dim"])
    }


@pytest.mark.parametrize("kernels", ["fused", "stock"])
def test_runner_steps_give_the_runtime_logits(exported, runner, kernels):
    """Prefill, then decode steps into the shared cache buffers, then a reset: each equals a fresh forward."""
    model = runner["BundleModel"](exported.bundle, _library(kernels))
    prompt = [5, 17, 99, 3, 250, 42, 7]
    for bits in (3, 8):
        model.reset()
        full = model.step(prompt, bits, list(range(len(prompt))))
        ref = exported.session.forward(np.asarray([prompt]), bits)[0]
        np.testing.assert_allclose(full, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
        ids = list(prompt)
        for _ in range(3):
            ids.append(int(np.argmax(full[-1])))
            full = model.step([ids[-1]], bits, [0])
            ref = exported.session.forward(np.asarray([ids]), bits)[0, -1:]
            np.testing.assert_allclose(full, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # rows ask for any subset of the step's positions
    model.reset()
    rows = model.step(prompt, 8, [1, 4])
    ref = exported.session.forward(np.asarray([prompt]), 8)[0, [1, 4]]
    np.testing.assert_allclose(rows, ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    # a precision makes a difference (a runner that ignored `bits` would pass the checks above only by luck)
    model.reset()
    assert not np.allclose(model.step(prompt, 3, [6]), rows[-1:], atol=1e-2)
    with pytest.raises(ValueError, match="exceed this model's max_seq_len"):
        model.step([1] * (MAX_SEQ_LEN + 1 - model.position), 8, [0])
    with pytest.raises(ValueError, match="E5M9 is not served"):
        model.step([1], 9, [0])


@pytest.mark.parametrize(("bits", "kernels"), [(3, "fused"), (8, "fused"), (3, "stock"), (8, "stock")])
def test_runner_answers_equal_the_runtime(exported, runner, bits, kernels):
    """The demo's tasks through the apps' engine at E5M``bits``: the runtime's answers and option scores."""
    from otaro_export.demo import load_tasks
    from otaro_export.demo.harness import run_task

    tasks = load_tasks()
    mine = runner["run_bundle"](
        exported.bundle, {t.name: bits for t in tasks}, echo=lambda _: None, custom_op_library=_library(kernels)
    )
    assert [(r["name"], r["bits"]) for r in mine] == [(t.name, bits) for t in tasks]
    assert {t.kind for t in tasks} == {"choose", "generate"}
    for result, task in zip(mine, tasks):
        ref = run_task(exported.session, task, bits)
        assert result["answer"] == ref.answer, task.name
        assert result["scores"].keys() == ref.scores.keys()
        for option, score in result["scores"].items():
            # same weights and kernels (stock: the function bodies), summed in another order at most; where int8
            # activations apply (docs/FORMAT.md §9) that order can move an activation on a rounding boundary of
            # fq to the next grid point: one step (a / 127) on one input, ~2e-3 measured on these prompts
            tol = 1e-2 if bits <= int8_max_bits(exported.session.directory) else 1e-4
            assert score == pytest.approx(ref.scores[option], abs=tol), (task.name, option)


def int8_max_bits(directory) -> int:
    """The artifact's int8-activation setting (docs/FORMAT.md §9), 0 if none."""
    from otaro_export.manifest import Manifest

    return int(Manifest.load(directory).extra.get("sefp_recipe", {}).get("int8_activations", 0))


def test_runner_refuses_a_bundle_of_another_version(exported, runner, tmp_path):
    bundle = json.loads((exported.bundle / BUNDLE_NAME).read_text())
    (tmp_path / BUNDLE_NAME).write_text(json.dumps({**bundle, "format_version": 1}))
    with pytest.raises(ValueError, match="no version-2 otaro demo bundle"):
        runner["BundleModel"](tmp_path)
