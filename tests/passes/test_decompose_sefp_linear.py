"""decompose_sefp_linear: otaro.sefp_linear -> Core ATen ops, bit-exact weights, runs on stock ExecuTorch."""

import pytest
import torch
from torch import nn

from otaro_export import ops
from otaro_export.passes.decompose_sefp_linear import (
    count_sefp_nodes,
    decompose_sefp_linear,
    sefp_linear_decomposition,
)
from otaro_export.sefp import SUPPORTED_BITS, center_levels
from otaro_export.sefp_linear import SEFPLinear


def tables() -> dict:
    """floor (no table), center, a fitted-like table (rows 3, 4 free), a generic one (every row free)."""
    gen = torch.Generator().manual_seed(11)
    fitted = center_levels()
    fitted[0, :8] = torch.tensor([0.0, 21, 52, 90, 131, 160, 201, 240])
    fitted[1, :16] = torch.rand(16, generator=gen) * 250
    generic = fitted.clone()
    for row in range(2, 6):
        generic[row, : 1 << (row + 3)] = torch.rand(1 << (row + 3), generator=gen) * 255
    return {"floor": None, "center": center_levels(), "fitted": fitted, "generic": generic}


RULES = list(tables())


def _layer(in_features: int, out_features: int, bias: bool, seed: int = 0, levels=None) -> SEFPLinear:
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-3, 2, in_features))  # groups with very different exponents
    return SEFPLinear.from_linear(linear, levels=levels)


class TwoLayers(nn.Module):
    """Two SEFP layers sharing one runtime ``bits`` input (as after lower_to_sefp)."""

    def __init__(self, levels=None):
        super().__init__()
        self.a = _layer(96, 80, bias=True, seed=1, levels=levels)  # 96 % 64 != 0: padded last group
        self.b = _layer(80, 33, bias=False, seed=2)

    def forward(self, x, bits):
        self.a.bits = bits
        self.b.bits = bits
        return self.b(torch.relu(self.a(x)))


def _export(module, x):
    return torch.export.export(module, (x, ops.bits_tensor(8)), strict=True)


@pytest.fixture(scope="module")
def decomposed():
    module = TwoLayers(levels=tables()["fitted"]).eval()  # one layer with a table, one floor
    x = torch.randn(3, 96)
    ep = _export(module, x)
    assert count_sefp_nodes(ep) == 2
    return module, x, decompose_sefp_linear(ep)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_decomposition_equals_reference_op_exactly(bits, rule):
    layer = _layer(96, 40, bias=True, levels=tables()[rule])
    x = torch.randn(5, 96)
    args = (x, layer.p0, layer.p1, layer.p2, layer.p3, layer.exponents, ops.bits_tensor(bits), layer.bias, layer.levels)
    # Same dequantized weights and the same torch linear on both sides: identical, not merely close.
    assert torch.equal(sefp_linear_decomposition(*args), ops.sefp_linear(*args))


@pytest.mark.parametrize("rule", RULES)
def test_decomposed_weight_is_exact_at_every_bit(rule):
    """Identity input recovers W_k^T exactly: the dequantized weights match SEFPWeight.dequantize bit for bit."""
    layer = _layer(128, 24, bias=False, levels=tables()[rule])
    eye = torch.eye(128)
    for bits in SUPPORTED_BITS:
        got = sefp_linear_decomposition(
            eye, layer.p0, layer.p1, layer.p2, layer.p3, layer.exponents, ops.bits_tensor(bits), None, layer.levels
        )
        assert torch.equal(got.T, layer.dequantized_weight(bits)), bits


def test_pass_removes_every_sefp_node_and_keeps_results(decomposed):
    module, x, ep = decomposed
    assert count_sefp_nodes(ep) == 0
    run = ep.module()
    for bits in SUPPORTED_BITS:
        module.a.set_bits(bits), module.b.set_bits(bits)
        with torch.no_grad():
            want = module.b(torch.relu(module.a(x)))
        assert torch.equal(run(x, ops.bits_tensor(bits)), want), bits


def test_pass_is_identity_without_sefp_nodes():
    ep = torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),))
    assert decompose_sefp_linear(ep) is ep


@pytest.mark.parametrize("bad", [0, 2, 9, -1])
def test_out_of_range_bits_raise_in_the_decomposed_program(decomposed, bad):
    _, x, ep = decomposed
    with pytest.raises((IndexError, RuntimeError)):
        ep.module()(x, torch.tensor(bad, dtype=torch.int64))


def test_decomposed_program_is_core_aten_and_runs_on_stock_executorch(decomposed):
    """to_edge with IR checks on (Core ATen only), then the stock portable runtime, no project library."""
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    module, x, ep = decomposed
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=True)).to_executorch()
    targets = {str(n.target) for n in program.exported_program().graph.nodes if n.op == "call_function"}
    assert not any("otaro" in t for t in targets)
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    for bits in SUPPORTED_BITS:
        module.a.set_bits(bits), module.b.set_bits(bits)
        with torch.no_grad():
            want = module.b(torch.relu(module.a(x)))
        (got,) = method.execute([x, ops.bits_tensor(bits)])
        # Exact weights; the portable mm sums in its own order, so allow float32
        # rounding of a ~100-term dot product with |terms| up to ~1e2: 1e-4 relative.
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    with pytest.raises(RuntimeError):  # index_select range check in the portable kernel
        method.execute([x, torch.tensor(9, dtype=torch.int64)])


class Int8TwoLayers(TwoLayers):
    """TwoLayers whose nodes run int8 activations up to E5M4 (docs/FORMAT.md §9), as set_int8_activations sets
    them; ``b`` reads ``clamp_min(bits, 5)`` as a layer floored at E5M5 does (so its E5M3 call stays float)."""

    def forward(self, x, bits):
        a, b = self.a, self.b
        h = ops.sefp_linear(x, a.p0, a.p1, a.p2, a.p3, a.exponents, bits, a.bias, a.levels, 4)
        floored = torch.clamp_min(bits, 5)
        return ops.sefp_linear(torch.relu(h), b.p0, b.p1, b.p2, b.p3, b.exponents, floored, None, b.levels, 4)


def _int8_reference(module, x, bits, act_int8_max_bits=4):
    from otaro_export import activation_quant as aq

    a, b = module.a, module.b
    xa = aq.fake_quantize(x) if aq.applies(bits, act_int8_max_bits) else x
    h = torch.relu(torch.nn.functional.linear(xa, a.dequantized_weight(bits), a.bias))
    return torch.nn.functional.linear(h, b.dequantized_weight(max(bits, 5)))  # effective E5M5+: float


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_int8_decomposition_equals_reference_op_exactly(bits, rule):
    """fq(x) from the same float32 operations as activation_quant.fake_quantize, the same weights, the same
    torch linear: identical to the op's reference, with zero, Inf and NaN blocks kept as they are."""
    layer = _layer(150, 40, bias=True, levels=tables()[rule])
    x = torch.randn(2, 4, 150, generator=torch.Generator().manual_seed(bits)) * 3
    x[0, 1, :64] = 0.0
    x[0, 2, 70] = float("inf")
    x[1, 3, 5] = float("nan")
    args = (x, layer.p0, layer.p1, layer.p2, layer.p3, layer.exponents, ops.bits_tensor(bits), layer.bias, layer.levels)
    want = ops.sefp_linear(*args, 4)
    got = sefp_linear_decomposition(*args, 4)
    assert torch.equal(got.nan_to_num(1.0, 2.0, 3.0), want.nan_to_num(1.0, 2.0, 3.0))
    assert torch.equal(got.isnan(), want.isnan())
    if bits <= 4:  # the setting changed the result (so this test can fail)
        assert not torch.equal(got[1, :2], sefp_linear_decomposition(*args)[1, :2])


@pytest.fixture(scope="module")
def int8_decomposed():
    module = Int8TwoLayers(levels=tables()["fitted"]).eval()
    x = torch.randn(3, 96) * 2
    ep = _export(module, x)
    assert [n.args[9] for n in ep.graph.nodes if n.target is ops.sefp_linear] == [4, 4]
    return module, x, decompose_sefp_linear(ep)


def test_int8_pass_keeps_results_at_every_precision(int8_decomposed):
    module, x, ep = int8_decomposed
    assert count_sefp_nodes(ep) == 0
    for bits in SUPPORTED_BITS:
        got = ep.module()(x, ops.bits_tensor(bits))
        assert torch.equal(got, _int8_reference(module, x, bits)), bits
        assert torch.equal(got, module(x, ops.bits_tensor(bits))), bits


def test_int8_decomposed_program_is_core_aten_and_runs_on_stock_executorch(int8_decomposed):
    """With int8 activations the portable program is still Core ATen and runs on the stock runtime, equal to
    the reference at every precision and different from float activations at E5M3."""
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    module, x, ep = int8_decomposed
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=True)).to_executorch()
    targets = {str(n.target) for n in program.exported_program().graph.nodes if n.op == "call_function"}
    assert not any("otaro" in t for t in targets)
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    for bits in SUPPORTED_BITS:
        (got,) = method.execute([x, ops.bits_tensor(bits)])
        # fq(x) is the same IEEE float32 operations on both sides (exact; it reads the program input, so no
        # upstream difference can move a value across an fq rounding boundary) and the weights are exact: only
        # the portable mm's summation order differs, the float test's 1e-4 relative above.
        torch.testing.assert_close(got, _int8_reference(module, x, bits), rtol=1e-4, atol=1e-4)
    (got3,) = method.execute([x, ops.bits_tensor(3)])
    assert (got3 - _int8_reference(module, x, 3, act_int8_max_bits=0)).abs().max() > 1e-3


def test_int8_ties_round_half_to_even_in_the_portable_program():
    """fq's round is half to even (activation_quant) in the exported portable program too (XNNPACK + stock
    kernels, as --kernels portable lowers it): with a = 127 the scale is 1 and x = 0.5, 1.5, 2.5, ... are ties."""
    from executorch.runtime import Runtime

    from otaro_export.export.executorch_export import lower_to_executorch

    torch.manual_seed(3)
    layer = SEFPLinear.from_linear(nn.Linear(64, 16, bias=False))  # weights of one magnitude: E5M3 keeps them

    class One(nn.Module):
        def forward(self, x, bits):
            return ops.sefp_linear(x, layer.p0, layer.p1, layer.p2, layer.p3, layer.exponents, bits, None, None, 4)

    x = torch.zeros(1, 64)
    x[0, 0] = 127.0
    x[0, 1:9] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 4.5])
    program = lower_to_executorch(_export(One(), x), "portable")
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    (got,) = method.execute([x, ops.bits_tensor(3)])
    want = sefp_linear_decomposition(x, *layer.packed().planes(), layer.exponents, ops.bits_tensor(3), None, None, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # rounding the ties away from zero would give another result (so this test can fail)
    half_away = x.sign() * torch.floor(x.abs() + 0.5)  # x[0] = 127 stays: fq with a = 127 is the rounding itself
    away = sefp_linear_decomposition(half_away, *layer.packed().planes(), layer.exponents, ops.bits_tensor(3))
    assert (away - want).abs().max() > 1e-3
