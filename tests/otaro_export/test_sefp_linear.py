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
