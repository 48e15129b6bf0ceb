"""OnnxSession: KV-cache decoding equals the full-sequence forward; errors are clear."""

import numpy as np
import pytest
import torch

from otaro_export.errors import ArtifactError, InvalidBitsError, KernelLibraryError
from otaro_export.export.onnx_export import ARTIFACT_NAME
from otaro_export.export.onnx_reference import reference_decoder, reference_logits
from otaro_export.runtime import load

# Same reasoning as the export parity test: exact dequantization on both sides, float32 summation
# order differs (~1e-6 on logits ~10); a cached decode step reorders nothing else.
ATOL = 1e-4


@pytest.fixture(scope="module")
def llama(tiny_onnx):
    return tiny_onnx("llama")


@pytest.mark.parametrize("use_library", [True, False], ids=["fused", "fallback"])
def test_kv_cache_decode_equals_full_forward_and_reference(llama, use_library):
    directory, loaded = llama
    session = load(directory, use_library=use_library)
    assert session.use_library is use_library
    ids = np.random.default_rng(1).integers(0, 259, (1, 11))
    for k in (3, 6, 8):  # one session, precision switched per call
        full = session.forward(ids, k)
        ref = reference_logits(reference_decoder(directory, loaded.model, k), torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(full, ref, rtol=0, atol=ATOL)
        session._reset()
        steps = [session._step(ids[:, :6], 0, k)] + [session._step(ids[:, i : i + 1], i, k) for i in range(6, 11)]
        np.testing.assert_allclose(np.concatenate(steps, axis=1), full, rtol=0, atol=ATOL)
        session._reset()
        last = session._step(ids, 0, k, last_only=True)  # generation asks for the last position only
        np.testing.assert_allclose(last, full[:, -1:], rtol=0, atol=ATOL)


def test_generate_is_greedy_over_the_reference(llama):
    directory, loaded = llama
    session = load(directory)
    prompt = session.encode_prompt("hi")
    got = session.generate_ids(prompt, 4, 6, stop_at_eos=False)
    ref_model = reference_decoder(directory, loaded.model, 4)
    ids = list(prompt)
    for _ in range(6):
        ids.append(int(reference_logits(ref_model, torch.tensor([ids]))[0, -1].argmax()))
    assert got == ids[len(prompt) :]
    assert session.last_stats.new_tokens == 6


def test_bits_out_of_range_is_rejected_before_onnxruntime(llama):
    session = load(llama[0], use_library=False)
    for bad in (2, 9):
        with pytest.raises(InvalidBitsError):
            session.forward(np.zeros((1, 2), np.int64), bad)
        with pytest.raises(InvalidBitsError):
            session._step(np.zeros((1, 2), np.int64), 0, bad)


def test_cache_position_mismatch_and_overflow_are_errors(llama):
    session = load(llama[0], use_library=False)
    session._reset()
    with pytest.raises(ValueError, match="cache holds 0"):
        session._step(np.zeros((1, 1), np.int64), 3, 8)
    with pytest.raises(ValueError, match="max_seq_len"):
        session.forward(np.zeros((1, session.max_seq_len + 1), np.int64), 8)


def test_missing_library_names_the_fix(llama, monkeypatch):
    from otaro_export.runtime_ops import ort_library

    def unavailable(num_threads=None):
        raise KernelLibraryError("cannot build the onnxruntime SEFP kernel library: g++ not found")

    monkeypatch.setattr(ort_library, "session_options", unavailable)
    with pytest.raises(KernelLibraryError, match="use_library=False") as info:
        load(llama[0])  # the manifest says fused -> the library is required
    assert "g++" in str(info.value)
    assert load(llama[0], use_library=False).use_library is False  # the portable path still works


def test_portable_manifest_does_not_load_the_library(llama, tmp_path, monkeypatch):
    import shutil

    from otaro_export.export.onnx_export import kernel_fields
    from otaro_export.manifest import Manifest
    from otaro_export.runtime_ops import ort_library

    # --kernels portable writes the same .onnx; only the manifest differs (see kernel_fields)
    directory = tmp_path / "portable"
    shutil.copytree(llama[0], directory)
    manifest = Manifest.load(directory)
    manifest.kernels, manifest.kernel_library = kernel_fields("portable")
    manifest.save(directory)
    monkeypatch.setattr(ort_library, "session_options", lambda **_: pytest.fail("library loaded"))
    session = load(directory)
    assert session.use_library is False and session.manifest.kernel_library is None
    assert session.forward(np.zeros((1, 3), np.int64), 3).shape == (1, 3, 259)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "drop_data"])
def test_corrupt_or_truncated_artifact_is_an_artifact_error(llama, tmp_path, damage):
    import shutil

    directory = tmp_path / "copy"
    shutil.copytree(llama[0], directory)
    path = directory / ARTIFACT_NAME
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not an onnx model" * 100)
    else:
        (directory / f"{ARTIFACT_NAME}.data").write_bytes(b"")
    with pytest.raises(ArtifactError, match="re-export"):
        load(directory, use_library=False)


@pytest.mark.slow
def test_smollm2_greedy_text_at_e5m8_matches_torch_reference(tmp_path):
    """The default model end to end with the default recipe (fitted tables, searched exponents, floors,
    SEFP tied lm_head, int8 activations up to E5M4): export, load with the fused library, 32 greedy tokens at
    E5M8 equal the torch reference of the artifact's own stored bits; E5M3's prompt logits are as close to it
    as the reference is to itself under float32-sized jitter."""
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.models import load_model

    loaded = load_model("default")
    export_model(ExportOptions(target="onnx", output=tmp_path, max_seq_len=128), log=lambda m: None, loaded=loaded)
    session = load(tmp_path)
    prompt = session.encode_prompt("What is the capital of France?")
    got = session.generate_ids(prompt, 8, 32, stop_at_eos=False)

    teacher = load_model("default").model
    reference = reference_decoder(tmp_path, teacher, 8)
    ids, want = torch.tensor([prompt]), []
    for _ in range(32):
        want.append(int(reference_logits(reference, ids)[0, -1].argmax()))
        ids = torch.cat([ids, torch.tensor([[want[-1]]])], dim=1)
    assert session.tokenizer.decode(got) == session.tokenizer.decode(want)
    assert got == want
    # E5M3 runs with int8 activations (docs/FORMAT.md §9): fq rounds to a grid, so a float32 summation-order
    # difference upstream moves the odd activation to the neighbouring grid point, and 30 layers amplify that
    # (the runtime's prefill and decode differ from each other as much). Elementwise logits are then no test;
    # the reference's own spread is: jittering its linears' inputs by 1e-7 (relative, float32 rounding size)
    # moves it as far (measured: KL 0.006 mean, logits 0.16 median), against 0.55 from E5M3 to float.
    reference3 = reference_decoder(tmp_path, teacher, 3)
    ids = torch.tensor([prompt])
    e5m3 = reference_logits(reference3, ids)
    got3 = torch.from_numpy(session.forward(np.array([prompt]), 3))
    torch.manual_seed(0)
    hooks = [m.register_forward_pre_hook(_jitter) for m in reference3.modules() if isinstance(m, torch.nn.Linear)]
    jittered = reference_logits(reference3, ids)
    for h in hooks:
        h.remove()
    spread, kl = _kl(e5m3, jittered), _kl(e5m3, got3)
    assert kl <= 3 * spread + 1e-3, (kl, spread)
    assert (got3.argmax(-1) == e5m3.argmax(-1)).float().mean() >= 0.9

    # The demo's multiple-choice tasks (otaro demo's built-in script) are as right at E5M3 and E5M4 as at
    # E5M8 (before the export's reconstruction rule, E5M3 answered "Saturn" for the Red Planet).
    from otaro_export.demo.harness import score_options
    from otaro_export.demo.tasks import load_tasks

    right = {"sentiment": "positive", "quiz": "Mars"}
    choose = [t for t in load_tasks() if t.kind == "choose"]
    assert {t.name for t in choose} == set(right)
    for bits in (8, 4, 3):
        answers = {t.name: score_options(session, t, bits)[0] for t in choose}
        assert answers == right, (bits, answers)


def _jitter(_module, args):
    x = args[0]
    return (x * (1 + 1e-7 * torch.randn_like(x)), *args[1:])


def _kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> float:
    """Mean over positions of KL(softmax p || softmax q)."""
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return float((lp.exp() * (lp - lq)).sum(-1).mean())


def test_a_manifest_that_disagrees_with_the_graphs_caches_is_refused(llama, tmp_path):
    import json
    import shutil

    directory = tmp_path / "edited"
    shutil.copytree(llama[0], directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["model"]["head_dim"] = manifest["model"]["head_dim"] * 2  # plausible, but not this graph's
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="describes KV caches of shape"):
        load(directory)
