"""The independent numpy reference (runtime_ops/reference.py) against otaro_export.sefp and the ops, every rule."""

import numpy as np
import pytest
import torch

from otaro_export import ops, packing, sefp
from otaro_export.runtime_ops import reference


def test_rule_tables_agree_with_the_torch_ones():
    np.testing.assert_array_equal(reference.floor_levels(), sefp.floor_levels().numpy())
    np.testing.assert_array_equal(reference.center_levels(), sefp.center_levels().numpy())


def _tables():
    gen = np.random.default_rng(0)
    fitted = reference.center_levels()
    for k in (3, 4):
        fitted[k - 3, : 2**k] = np.sort(gen.uniform(0, 256, 2**k)).astype(np.float32)
    generic = np.zeros((6, 256), np.float32)
    for k in range(3, 9):
        generic[k - 3, : 2**k] = gen.uniform(0, 300, 2**k).astype(np.float32)  # non-affine, even non-monotonic
    return {"floor": None, "center": reference.center_levels(), "fitted": fitted, "generic": generic}


@pytest.mark.parametrize("rule", ["floor", "center", "fitted", "generic"])
def test_dequantize_matches_sefp_bit_for_bit(rule):
    levels = _tables()[rule]
    w = torch.randn(9, 150, generator=torch.Generator().manual_seed(1)) * torch.logspace(-3, 1, 150)
    w[0, :5] = torch.tensor([-1e-9, 0.0, -0.0, 3.0, -3.0])  # zero magnitudes keep their sign under center
    s, q, e = reference.quantize(w.numpy())
    torch_q = sefp.quantize(w)
    for bits in sefp.SUPPORTED_BITS:
        got = reference.dequantize(s, q, e, 150, bits, levels)
        want = torch_q.dequantize(bits, None if levels is None else torch.from_numpy(levels))
        np.testing.assert_array_equal(got, want.numpy(), err_msg=f"{rule} E5M{bits}")


def test_center_decodes_a_zero_magnitude_to_half_a_step_signed():
    w = np.zeros((1, 64), np.float32)
    w[0, 0], w[0, 1], w[0, 2] = 1.0, -1e-6, 1e-6  # e = 0: 1e-6 truncates to q = 0 at every precision
    s, q, e = reference.quantize(w)
    for bits in range(3, 9):
        got = reference.dequantize(s, q, e, 64, bits, reference.center_levels())
        half_step = 2.0 ** (-bits)  # (0 + 1/2) * 2^(8-k) M8 steps of 2^-7
        assert got[0, 1] == -half_step and got[0, 2] == half_step


@pytest.mark.parametrize("rule", ["floor", "center", "fitted", "generic"])
def test_embedding_and_linear_match_the_ops(rule):
    levels = _tables()[rule]
    torch_levels = None if levels is None else torch.from_numpy(levels)
    gen = torch.Generator().manual_seed(2)
    w, x = torch.randn(12, 100, generator=gen), torch.randn(3, 100, generator=gen)
    p = packing.pack(sefp.quantize(w))
    ids = np.array([[0, 11], [5, 5]])
    for bits in sefp.SUPPORTED_BITS:
        b = ops.bits_tensor(bits)
        rows = ops.sefp_embedding(torch.from_numpy(ids), *p.planes(), p.exponents, b, 100, torch_levels)
        np.testing.assert_array_equal(reference.embedding(ids, w.numpy(), bits, levels), rows.numpy())
        y = ops.sefp_linear(x, *p.planes(), p.exponents, b, None, torch_levels).double().numpy()
        np.testing.assert_allclose(reference.linear(x.numpy(), w.numpy(), bits, None, levels), y, rtol=1e-5, atol=1e-4)


def test_reference_rejects_bad_tables_and_ids():
    s, q, e = reference.quantize(np.ones((2, 64), np.float32))
    bad = reference.center_levels()
    bad[0, 3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        reference.dequantize(s, q, e, 64, 3, bad)
    with pytest.raises(ValueError, match=r"\[6, 256\]"):
        reference.dequantize(s, q, e, 64, 3, bad[:, :16])
    with pytest.raises(IndexError):
        reference.embedding(np.array([2]), np.ones((2, 64), np.float32), 3)
