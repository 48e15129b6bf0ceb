import pytest
import torch

from otaro_export import ops, packing, sefp
from otaro_export.errors import InvalidBitsError


def make(n=8, k=100, bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g) if bias else None
    return w, b, packing.pack(sefp.quantize(w))


@pytest.mark.parametrize("bits", sefp.SUPPORTED_BITS)
@pytest.mark.parametrize("shape", [(1, 100), (3, 5, 100)])
def test_op_matches_dequantized_linear(bits, shape):
    w, b, p = make()
    x = torch.randn(*shape)
    y = ops.sefp_linear(x, *p.planes(), p.exponents, ops.bits_tensor(bits), b)
    expected = torch.nn.functional.linear(x, sefp.quantize(w).dequantize(bits), b)
    # same float32 ops in the same order: exact
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


def test_out_variant_and_no_bias():
    w, _, p = make(bias=False)
    x = torch.randn(2, 100)
    out = torch.empty(0)
    res = ops.sefp_linear_out(x, *p.planes(), p.exponents, ops.bits_tensor(5), None, out=out)
    assert res is out and out.shape == (2, 8)
    torch.testing.assert_close(out, torch.nn.functional.linear(x, sefp.quantize(w).dequantize(5)), rtol=0, atol=0)


@pytest.mark.parametrize("bits", [2, 9, 0])
def test_op_rejects_bits_out_of_range(bits):
    _, b, p = make()
    with pytest.raises(InvalidBitsError):
        ops.sefp_linear(torch.randn(1, 100), *p.planes(), p.exponents, torch.tensor(bits), b)


@pytest.mark.parametrize("bits", [torch.tensor(8, dtype=torch.int32), torch.tensor([8]), torch.tensor(8.0)])
def test_op_rejects_bits_of_wrong_type(bits):
    _, b, p = make()
    with pytest.raises(InvalidBitsError):
        ops.sefp_linear(torch.randn(1, 100), *p.planes(), p.exponents, bits, b)


def test_op_rejects_wrong_dtypes_and_shapes():
    _, b, p = make()
    bits = ops.bits_tensor(8)
    with pytest.raises(TypeError):
        ops.sefp_linear(torch.randn(1, 100, dtype=torch.float64), *p.planes(), p.exponents, bits, b)
    with pytest.raises(ValueError, match="input features"):
        ops.sefp_linear(torch.randn(1, 200), *p.planes(), p.exponents, bits, b)
    with pytest.raises(ValueError, match="bias"):
        ops.sefp_linear(torch.randn(1, 100), *p.planes(), p.exponents, bits, b[:3])
    with pytest.raises(ValueError, match="p0"):
        ops.sefp_linear(torch.randn(1, 100), p.p1, p.p1, p.p2, p.p3, p.exponents, bits, b)


class OneLayer(torch.nn.Module):
    def __init__(self, p, b):
        super().__init__()
        for name, t in zip(packing.PLANE_NAMES, p.planes()):
            self.register_buffer(name, t)
        self.register_buffer("exponents", p.exponents)
        self.register_buffer("bias", b)

    def forward(self, x, bits):
        return ops.sefp_linear(x, self.p0, self.p1, self.p2, self.p3, self.exponents, bits, self.bias)


def test_torch_export_keeps_bits_a_runtime_input():
    """One exported program serves all six precisions."""
    w, b, p = make()
    x = torch.randn(4, 100)
    ep = torch.export.export(OneLayer(p, b), (x, ops.bits_tensor(8)))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert torch.ops.otaro.sefp_linear.default in targets
    module = ep.module()
    for bits in sefp.SUPPORTED_BITS:
        y = module(x, ops.bits_tensor(bits))
        torch.testing.assert_close(
            y, torch.nn.functional.linear(x, sefp.quantize(w).dequantize(bits), b), rtol=0, atol=0
        )
