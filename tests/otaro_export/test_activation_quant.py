"""The int8-activation spec (otaro_export/activation_quant.py, docs/FORMAT.md §9)."""

import numpy as np
import pytest
import torch

from otaro_export import activation_quant as aq
from otaro_export.sefp import SUPPORTED_BITS, center_levels, floor_levels


def _numpy_fq(x: np.ndarray) -> np.ndarray:
    """An independent loop over the blocks, straight from the docstring's formula (float32 throughout)."""
    rows, k = x.shape
    out = x.copy()
    for r in range(rows):
        for start in range(0, k, 64):
            block = x[r, start : start + 64]
            a = np.float32(np.max(np.abs(block)))
            if a == 0 or not np.isfinite(a) or not np.all(np.isfinite(block)):
                continue
            q = np.clip(np.rint(block * (np.float32(127) / a)), -127, 127).astype(np.float32)
            out[r, start : start + 64] = q * (a / np.float32(127))
    return out


@pytest.mark.parametrize("k", [64, 96, 576, 1, 130])
def test_fake_quantize_matches_an_independent_loop_bit_for_bit(k):
    x = torch.randn(3, k, generator=torch.Generator().manual_seed(k)) * 3
    x[0, 0] = 40.0  # an outlier: its block's scale, not the others'
    got = aq.fake_quantize(x)
    np.testing.assert_array_equal(got.numpy(), _numpy_fq(x.numpy()))


def test_values_lie_on_each_blocks_int8_grid():
    x = torch.randn(2, 200, generator=torch.Generator().manual_seed(0))
    got = aq.fake_quantize(x)
    for start in range(0, 200, 64):
        block, fq = x[:, start : start + 64], got[:, start : start + 64]
        step = block.abs().amax(dim=-1, keepdim=True) / 127
        q = fq / step
        assert torch.allclose(q, q.round(), atol=1e-4) and bool((q.abs() <= 127.0001).all())
        assert bool(((fq - block).abs() <= step / 2 * 1.0001).all())  # round to nearest: half a step at most


def test_rounding_is_half_to_even():
    # a = 127: the grid step is 1, so 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0
    x = torch.zeros(1, 64)
    x[0, :5] = torch.tensor([127.0, 0.5, 1.5, 2.5, -0.5])
    assert aq.fake_quantize(x)[0, :5].tolist() == [127.0, 0.0, 2.0, 2.0, -0.0]


def test_zero_and_non_finite_blocks_are_kept_as_they_are():
    x = torch.randn(1, 256, generator=torch.Generator().manual_seed(1))
    x[0, 0:64] = 0.0
    x[0, 70] = float("inf")
    x[0, 130] = float("nan")
    got = aq.fake_quantize(x)
    assert bool((got[0, :64] == 0).all())
    assert torch.equal(got[0, 64:128], x[0, 64:128])
    assert torch.equal(got[0, 128:192].isnan(), x[0, 128:192].isnan())
    assert torch.equal(got[0, 128:192].nan_to_num(), x[0, 128:192].nan_to_num())
    assert not torch.equal(got[0, 192:], x[0, 192:])  # a finite block is quantized


def test_leading_dims_and_dtype():
    x = torch.randn(2, 3, 70)
    assert aq.fake_quantize(x).shape == x.shape
    with pytest.raises(TypeError, match="float32"):
        aq.fake_quantize(x.double())


def test_max_bits_and_applies():
    assert aq.applies(3, 4) and aq.applies(4, 4) and not aq.applies(5, 4)
    assert not aq.applies(3, aq.OFF)
    for bad in (1, 2, 9, -1, True, "4", 4.0):
        with pytest.raises(ValueError, match="max_bits must be 0"):
            aq.check_max_bits(bad)


def test_round_levels_to_int8_grid_touches_only_the_rows_it_must():
    fitted = center_levels()
    fitted[0, :8] = torch.tensor([0.4, 21.5, 52.2, 90.7, 131.1, 160.0, 201.49, 255.7])
    fitted[1, :16] = torch.linspace(0.3, 250.6, 16)
    fitted[2, :32] = torch.linspace(0.3, 250.6, 32)
    out = aq.round_levels_to_int8_grid(fitted, 4)
    assert out[0, :8].tolist() == [0.0, 22.0, 52.0, 90.0, 132.0, 160.0, 202.0, 254.0]  # nearest even; clamp 254
    assert torch.equal(out[1, :16], (fitted[1, :16] / 2).round() * 2)
    assert torch.equal(out[2:], fitted[2:])  # above max_bits: unchanged
    assert aq.int8_grid_levels(out, 3) and aq.int8_grid_levels(out, 4) and not aq.int8_grid_levels(out, 5)
    for table, top in ((floor_levels(), 7), (center_levels(), 6)):  # already on the grid up to there
        assert torch.equal(aq.round_levels_to_int8_grid(table, top), table)
        assert all(aq.int8_grid_levels(table, k) for k in range(3, top + 1))
    assert not aq.int8_grid_levels(center_levels(), 7)  # its offset is one M8 step: odd
    assert all(aq.int8_grid_levels(None, k) for k in SUPPORTED_BITS if k <= 7)
