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


def _tables():
    fitted = sefp.center_levels()
    fitted[0, :8] = torch.tensor([0.0, 20, 50, 90, 130, 160, 200, 240])
    return [sefp.floor_levels(), sefp.center_levels(), fitted]


@pytest.mark.parametrize("bits", sefp.SUPPORTED_BITS)
def test_levels_reach_the_reference(bits):
    w, b, p = make()
    x = torch.randn(3, 100)
    for levels in _tables():
        y = ops.sefp_linear(x, *p.planes(), p.exponents, ops.bits_tensor(bits), b, levels)
        want = torch.nn.functional.linear(x, sefp.quantize(w).dequantize(bits, levels), b)
        torch.testing.assert_close(y, want, rtol=0, atol=0)
    # a floor table is the default rule
    floor = ops.sefp_linear(x, *p.planes(), p.exponents, ops.bits_tensor(bits), b, sefp.floor_levels())
    assert torch.equal(floor, ops.sefp_linear(x, *p.planes(), p.exponents, ops.bits_tensor(bits), b))


def test_levels_out_variant_without_bias():
    w, _, p = make(bias=False)
    x = torch.randn(2, 100)
    out = torch.empty(0)
    levels = sefp.center_levels()
    ops.sefp_linear_out(x, *p.planes(), p.exponents, ops.bits_tensor(4), None, levels, out=out)
    torch.testing.assert_close(
        out, torch.nn.functional.linear(x, sefp.quantize(w).dequantize(4, levels)), rtol=0, atol=0
    )


def test_bad_levels_are_rejected():
    _, b, p = make()
    bits, x = ops.bits_tensor(4), torch.randn(1, 100)
    with pytest.raises(ValueError, match=r"levels must be float32 \[6, 256\]"):
        ops.sefp_linear(x, *p.planes(), p.exponents, bits, b, torch.zeros(6, 16))
    negative = sefp.center_levels()
    negative[1, 3] = -2.0
    with pytest.raises(ValueError, match="finite and >= 0"):
        ops.sefp_linear(x, *p.planes(), p.exponents, bits, b, negative)


@pytest.mark.parametrize("bits", sefp.SUPPORTED_BITS)
@pytest.mark.parametrize("ids_shape", [(5,), (2, 3), (0,)])
def test_embedding_gathers_dequantized_rows(bits, ids_shape):
    w, _, p = make(n=20, k=100)
    ids = torch.randint(0, 20, ids_shape, generator=torch.Generator().manual_seed(bits))
    for levels in [None, *_tables()]:
        rows = ops.sefp_embedding(ids, *p.planes(), p.exponents, ops.bits_tensor(bits), 100, levels)
        assert rows.shape == (*ids_shape, 100) and rows.dtype == torch.float32
        assert torch.equal(rows, sefp.quantize(w).dequantize(bits, levels)[ids])


def test_embedding_out_variant():
    w, _, p = make(n=20, k=100)
    ids = torch.tensor([[3, 19], [0, 7]])
    out = torch.empty(0)
    res = ops.sefp_embedding_out(ids, *p.planes(), p.exponents, ops.bits_tensor(6), 100, None, out=out)
    assert res is out and torch.equal(out, sefp.quantize(w).dequantize(6)[ids])


@pytest.mark.parametrize("bad", [-1, 20, 1000])
def test_embedding_ids_out_of_range_are_an_index_error(bad):
    _, _, p = make(n=20, k=100)
    with pytest.raises(IndexError, match=rf"id {bad} at flat position 1 is outside \[0, 20\)"):
        ops.sefp_embedding(torch.tensor([0, bad]), *p.planes(), p.exponents, ops.bits_tensor(5), 100)


def test_embedding_rejects_bad_arguments():
    _, _, p = make(n=20, k=100)
    ids, bits = torch.tensor([1]), ops.bits_tensor(5)
    with pytest.raises(TypeError, match="ids must be int64"):
        ops.sefp_embedding(ids.to(torch.int32), *p.planes(), p.exponents, bits, 100)
    with pytest.raises(ValueError, match="in_features is 200"):
        ops.sefp_embedding(ids, *p.planes(), p.exponents, bits, 200)
    with pytest.raises(InvalidBitsError):
        ops.sefp_embedding(ids, *p.planes(), p.exponents, ops.bits_tensor(8).to(torch.int32), 100)
    with pytest.raises(InvalidBitsError):
        ops.sefp_embedding(ids, *p.planes(), p.exponents, torch.tensor(9), 100)


class TiedEmbedding(torch.nn.Module):
    """The tied embedding + lm_head shape of use: one set of planes, both ops."""

    def __init__(self, p, levels):
        super().__init__()
        for name, t in zip(packing.PLANE_NAMES, p.planes()):
            self.register_buffer(name, t)
        self.register_buffer("exponents", p.exponents)
        self.register_buffer("levels", levels)
        self.k = p.in_features

    def forward(self, ids, bits):
        planes = (self.p0, self.p1, self.p2, self.p3, self.exponents, bits)
        h = ops.sefp_embedding(ids, *planes, self.k, self.levels)
        return ops.sefp_linear(h, *planes, None, self.levels)


def test_torch_export_of_both_ops_keeps_bits_and_levels():
    w, _, p = make(n=20, k=100)
    levels = _tables()[2]
    ids = torch.tensor([[1, 4, 19]])
    ep = torch.export.export(TiedEmbedding(p, levels), (ids, ops.bits_tensor(8)))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert ops.sefp_embedding in targets and ops.sefp_linear in targets
    module = ep.module()
    q = sefp.quantize(w)
    for bits in sefp.SUPPORTED_BITS:
        wk = q.dequantize(bits, levels)
        torch.testing.assert_close(module(ids, ops.bits_tensor(bits)), wk[ids] @ wk.T, rtol=0, atol=0)


@pytest.mark.parametrize("bits", sefp.SUPPORTED_BITS)
def test_int8_activations_quantize_the_input_at_bits_up_to_the_setting(bits):
    """act_int8_max_bits = 4 (docs/FORMAT.md §9): fq(x) @ W_k^T at E5M3/E5M4, x @ W_k^T above; 0 or omitted
    (an old-style call): never. The reference is activation_quant.fake_quantize, in the same float32 ops."""
    from otaro_export import activation_quant

    w, b, p = make(k=150)
    x = torch.randn(2, 3, 150, generator=torch.Generator().manual_seed(bits)) * 3
    args = (x, *p.planes(), p.exponents, ops.bits_tensor(bits), b, None)
    xq = activation_quant.fake_quantize(x) if bits <= 4 else x
    want = torch.nn.functional.linear(xq, sefp.quantize(w).dequantize(bits), b)
    assert torch.equal(ops.sefp_linear(*args, 4), want)
    assert torch.equal(ops.sefp_linear(*args, act_int8_max_bits=4), want)
    out = torch.empty(0)
    assert torch.equal(ops.sefp_linear_out(*args, 4, out=out), want)
    float_y = torch.nn.functional.linear(x, sefp.quantize(w).dequantize(bits), b)
    assert torch.equal(ops.sefp_linear(*args), float_y) and torch.equal(ops.sefp_linear(*args, 0), float_y)
    if bits <= 4:  # the setting changes the result (so this test can fail)
        assert not torch.equal(want, float_y)


@pytest.mark.parametrize("bad", [1, 2, 9, -1])
def test_int8_activations_setting_out_of_range_is_a_clean_error(bad):
    _, b, p = make()
    args = (torch.randn(1, 100), *p.planes(), p.exponents, ops.bits_tensor(3), b, None, bad)
    with pytest.raises(ValueError, match=r"act_int8_max_bits must be 0 \(off\) or one of \[3, 4, 5, 6, 7, 8\]"):
        ops.sefp_linear(*args)
    with pytest.raises(ValueError, match="act_int8_max_bits"):
        torch.export.export(_Int8Linear(p, bad), (torch.randn(1, 100), ops.bits_tensor(3)))


class _Int8Linear(torch.nn.Module):
    def __init__(self, p, act):
        super().__init__()
        self.planes, self.exponents, self.act = p.planes(), p.exponents, act

    def forward(self, x, bits):
        return ops.sefp_linear(x, *self.planes, self.exponents, bits, None, None, self.act)


def test_torch_export_keeps_the_int8_setting_a_node_constant():
    _, _, p = make()
    ep = torch.export.export(_Int8Linear(p, 4), (torch.randn(1, 100), ops.bits_tensor(8)))
    (node,) = [n for n in ep.graph.nodes if n.target is ops.sefp_linear]
    assert node.args[9] == 4
    x = torch.randn(1, 100)
    for bits in (3, 5):
        want = ops.sefp_linear(x, *p.planes(), p.exponents, ops.bits_tensor(bits), None, None, 4)
        assert torch.equal(ep.module()(x, ops.bits_tensor(bits)), want)
