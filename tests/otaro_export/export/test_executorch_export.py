"""export_executorch: Qwen2/Mistral, external weights, weights stored once, fp32 baseline, SmolLM2 (slow).

Tolerance: see tests/otaro_export/runtime/test_executorch_session.py (exact
dequantized weights; XNNPACK / fused-kernel fp32 sums in another order than
eager torch: ~1e-6 relative per layer, 1e-4 leaves a wide margin).
"""

import copy
import json

import numpy as np
import pytest
import torch

from otaro_export.convert import convert_model, dequantized_copy, select_sefp_linears
from otaro_export.errors import ArtifactError
from otaro_export.export.executorch_export import export_executorch_fp32
from otaro_export.packing import PLANE_NAMES
from otaro_export.runtime import load
from otaro_export.testing import TINY_EXECUTORCH_MAX_SEQ_LEN, tiny_executorch_artifact

TOL = dict(rtol=1e-4, atol=1e-4)
IDS = np.array([[7, 200, 31, 4, 99, 150]], dtype=np.int64)


@pytest.fixture(scope="session")
def et_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-executorch"


def _reference(model, bits):
    converted = copy.deepcopy(model)
    convert_model(converted)
    with torch.no_grad():
        return dequantized_copy(converted, bits)(torch.from_numpy(IDS)).logits.numpy()


def _check_parity(directory, model, bits_list=(3, 8)):
    session = load(directory)
    for bits in bits_list:
        np.testing.assert_allclose(session.forward(IDS, bits), _reference(model, bits), **TOL)
    return session


def test_qwen2_portable_with_biases(et_root):
    """Qwen2's q/k/v biases go through the decomposed op; the stock runtime needs no library."""
    directory, loaded = tiny_executorch_artifact(et_root, "qwen2", kernels="portable", num_layers=1)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kernel_library"] is None and manifest["kernels"] == "portable"
    assert manifest["quantized_layers"] == select_sefp_linears(loaded.model)
    _assert_weights_stored_once(directory, loaded.model)  # the decomposition's unpacking was not constant-folded
    _check_parity(directory, loaded.model)


def test_mistral_fused_with_external_weights(et_root, tmp_path):
    directory, loaded = tiny_executorch_artifact(
        et_root, "mistral", kernels="fused", num_layers=1, external_weights=True
    )
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kernel_library"] == "executorch"
    assert manifest["extra"]["data_files"] == ["model.ptd"]
    packed = sum(getattr(m, p).numel() for m in _sefp_modules(loaded.model) for p in (*PLANE_NAMES, "exponents"))
    embedding = loaded.model.get_input_embeddings().weight.numel() * 4
    # the planes and the float embedding moved to the .ptd (the .pte keeps the program and
    # XNNPACK's own packed copy of lm_head)
    assert (directory / "model.ptd").stat().st_size >= packed + embedding
    _check_parity(directory, loaded.model)
    # without its data file the artifact is rejected with a clear error
    copy_dir = tmp_path / "no-ptd"
    copy_dir.mkdir()
    for name in ("manifest.json", "model.pte"):
        (copy_dir / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(ArtifactError, match="model.ptd"):
        load(copy_dir)


def _sefp_modules(model):
    converted = copy.deepcopy(model)
    convert_model(converted)
    from otaro_export.convert import sefp_layers

    return list(sefp_layers(converted).values())


def _assert_weights_stored_once(directory, model):
    """One .pte for six precisions holds the packed planes once (no float copy of the SEFP weights)."""
    modules = _sefp_modules(model)
    packed = sum(
        getattr(m, p).numel() * getattr(m, p).element_size() for m in modules for p in (*PLANE_NAMES, "exponents")
    )
    sefp_floats = sum(m.in_features * m.out_features * 4 for m in modules)
    names = select_sefp_linears(model)
    other_floats = sum(
        p.numel() * 4 for n, p in model.named_parameters() if not any(n.startswith(f"{s}.") for s in names)
    )
    size = (directory / "model.pte").stat().st_size
    # tied embedding/lm_head may be stored twice (XNNPACK packs lm_head); 256 KiB covers the program itself
    assert size < packed + 2 * other_floats + 256 * 1024
    assert size < packed + 2 * other_floats + sefp_floats  # not even one float copy of the SEFP weights


def test_weights_are_stored_once(et_root):
    directory, loaded = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2)
    _assert_weights_stored_once(directory, loaded.model)


def test_fp32_baseline(tmp_path):
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm("llama", num_hidden_layers=1)
    manifest = export_executorch_fp32(
        loaded, tmp_path / "fp32", max_seq_len=TINY_EXECUTORCH_MAX_SEQ_LEN, log=lambda _m: None
    )
    assert manifest.inputs == ["input_ids", "cache_position"] and manifest.quantized_layers == []
    assert manifest.extra["baseline"] == "fp32"
    session = load(tmp_path / "fp32")
    with torch.no_grad():
        want = loaded.model(torch.from_numpy(IDS)).logits.numpy()
    np.testing.assert_allclose(session.forward(IDS, 8), want, **TOL)
    np.testing.assert_array_equal(session.forward(IDS, 3), session.forward(IDS, 8))  # no SEFP: bits ignored


@pytest.mark.slow
def test_smollm2_greedy_32_tokens_at_e5m8_equal_torch_reference(tmp_path):
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.models import load_model

    loaded = load_model("default")
    options = ExportOptions(target="executorch", output=tmp_path / "smol", kernels="fused", max_seq_len=96)
    export_model(options, log=lambda _m: None, loaded=loaded)
    session = load(tmp_path / "smol")
    prompt = session.encode_prompt("What is the capital of France?")
    got = session.generate_ids(prompt, 8, 32, stop_at_eos=False)

    model = copy.deepcopy(loaded.model)
    convert_model(model)
    ref = dequantized_copy(model, 8)
    assert got == _torch_greedy(ref, prompt, 32)


def _torch_greedy(model, prompt: list[int], new_tokens: int) -> list[int]:
    """Plain greedy loop with the eager KV cache (HF generate's min_new_tokens would mask EOS)."""
    out, past, step = [], None, torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(new_tokens):
            result = model(input_ids=step, past_key_values=past, use_cache=True)
            past = result.past_key_values
            out.append(int(result.logits[0, -1].argmax()))
            step = torch.tensor([[out[-1]]])
    return out
