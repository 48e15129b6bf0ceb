import pytest
import torch

from otaro_export import sefp
from otaro_export.sefp_linear import SEFPLinear


def test_from_linear_matches_dequantized_weights():
    torch.manual_seed(0)
    linear = torch.nn.Linear(100, 12)
    layer = SEFPLinear.from_linear(linear, name="l")
    x = torch.randn(2, 3, 100)
    q = sefp.quantize(linear.weight)
    for bits in sefp.SUPPORTED_BITS:
        layer.set_bits(bits)
        expected = torch.nn.functional.linear(x, q.dequantize(bits), linear.bias)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)


def test_state_dict_holds_planes_not_float_weight():
    layer = SEFPLinear.from_linear(torch.nn.Linear(64, 8, bias=False))
    keys = set(layer.state_dict())
    assert keys == {"p0", "p1", "p2", "p3", "exponents"}  # bits is runtime state, not stored
    assert layer.bias is None


def test_keeps_input_dtype():
    layer = SEFPLinear.from_linear(torch.nn.Linear(64, 8))
    assert layer(torch.randn(1, 64, dtype=torch.bfloat16)).dtype == torch.bfloat16


def test_levels_buffer_reaches_the_op():
    torch.manual_seed(1)
    linear = torch.nn.Linear(100, 12)
    levels = sefp.center_levels()
    levels[0, :8] = torch.arange(8, dtype=torch.float32) * 31  # a fitted-like E5M3 row
    layer = SEFPLinear.from_linear(linear, levels=levels)
    assert "levels" in layer.state_dict() and "levels=table" in repr(layer)
    x = torch.randn(3, 100)
    q = sefp.quantize(linear.weight)
    for bits in sefp.SUPPORTED_BITS:
        layer.set_bits(bits)
        want = torch.nn.functional.linear(x, q.dequantize(bits, levels), linear.bias)
        torch.testing.assert_close(layer(x), want, rtol=0, atol=0)
        assert torch.equal(layer.dequantized_weight(bits), q.dequantize(bits, levels))


def test_bad_levels_are_rejected_at_construction():
    bad = sefp.center_levels()
    bad[2, 0] = -1.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        SEFPLinear.from_linear(torch.nn.Linear(64, 8), levels=bad)
