"""The ExecuTorch kernel library runs otaro::sefp_linear and otaro::sefp_embedding inside ExecuTorch.

One-layer models are exported once each (torch.export -> to_edge -> to_executorch)
with the precision as a runtime input; ONE loaded method then runs bits 3..8.
Exact-case data (sefp_kernel_cases.py) makes the linear result independent of
summation order, so it must equal the torch reference bit for bit, for every
reconstruction rule; embedding rows are exact by construction.
"""

from __future__ import annotations

import pytest
import torch
from sefp_kernel_cases import RULES, embedding_reference, exact_problem, level_tables, summation_tolerance

from otaro_export import ops
from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels
from otaro_export.sefp_linear import SEFPLinear


class OneLayer(torch.nn.Module):
    def __init__(self, layer: SEFPLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return ops.sefp_linear(x, m.p0, m.p1, m.p2, m.p3, m.exponents, bits, m.bias, m.levels)


class TiedEmbedding(torch.nn.Module):
    """Embedding rows and the lm_head from one set of planes (the tied-weight use)."""

    def __init__(self, layer: SEFPLinear):
        super().__init__()
        self.layer = layer

    def forward(self, ids: torch.Tensor, bits: torch.Tensor):
        m = self.layer
        planes = (m.p0, m.p1, m.p2, m.p3, m.exponents, bits)
        rows = ops.sefp_embedding(ids, *planes, m.in_features, m.levels)
        return rows, ops.sefp_linear(rows, *planes, None, m.levels)


def _program(model, example, dynamic_shapes=None):
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    load_executorch_kernels()
    program = to_edge(torch.export.export(model, example, dynamic_shapes=dynamic_shapes)).to_executorch()
    targets = {str(n.target) for n in program.exported_program().graph.nodes if n.op == "call_function"}
    loaded = Runtime.get().load_program(program.buffer)
    # the method borrows the program's buffer: keep both alive as long as it
    return targets, (program, loaded), loaded.load_method("forward")


@pytest.fixture(scope="module")
def methods():
    """rule -> (model, forward method, x) for one 48x100 layer (K = 100: a partial last group)."""
    x, packed, bias = exact_problem(48, 100, 6, seed=5)
    out, keep = {}, []
    for rule, levels in level_tables().items():
        model = OneLayer(SEFPLinear(packed, bias, levels=levels)).eval()
        example = (x.reshape(2, 3, 100), ops.bits_tensor(8))
        targets, alive, forward = _program(model, example)
        assert "otaro.sefp_linear.out" in targets, targets
        keep.append(alive)
        out[rule] = (model, forward, example[0])
    yield out
    del out, keep


@pytest.mark.parametrize("rule", RULES)
def test_one_pte_runs_every_precision(methods, rule):
    model, forward, x = methods[rule]
    for bits in range(3, 9):
        b = ops.bits_tensor(bits)
        (got,) = forward.execute([x, b])
        want = model(x, b)  # the torch reference op
        assert got.shape == (2, 3, 48)
        assert torch.equal(got, want), f"{rule} bits={bits}"


def test_float_inputs_within_summation_bound(methods):
    for rule in ("floor", "generic"):
        model, forward, x = methods[rule]
        xf = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        packed = model.layer.packed()
        for bits in (3, 8):
            (got,) = forward.execute([xf, ops.bits_tensor(bits)])
            want = model(xf, ops.bits_tensor(bits))
            tol = summation_tolerance(xf.reshape(6, 100), packed, bits, model.layer.bias, model.layer.levels)
            assert bool(((got.double() - want.double()).abs() <= tol.reshape(got.shape)).all()), rule


@pytest.mark.parametrize("bits", [2, 9, -1])
def test_bits_out_of_range_fails_the_call_without_crashing(methods, bits):
    model, forward, x = methods["fitted"]
    with pytest.raises(RuntimeError):
        forward.execute([x, torch.tensor(bits, dtype=torch.int64)])
    (after,) = forward.execute([x, ops.bits_tensor(4)])  # the method still works afterwards
    assert torch.equal(after, model(x, ops.bits_tensor(4)))


@pytest.fixture(scope="module")
def embedding_method():
    _, packed, _ = exact_problem(40, 100, 1, seed=6)
    levels = level_tables(seed=5)["fitted"]
    layer = SEFPLinear(packed, levels=levels)
    model = TiedEmbedding(layer).eval()
    ids = torch.tensor([[0, 39, 7]])
    targets, alive, forward = _program(model, (ids, ops.bits_tensor(8)))
    assert {"otaro.sefp_embedding.out", "otaro.sefp_linear.out"} <= targets, targets
    yield model, forward, ids, packed, levels
    del alive


def test_embedding_rows_and_tied_head_every_precision(embedding_method):
    model, forward, ids, packed, levels = embedding_method
    for bits in range(3, 9):
        b = ops.bits_tensor(bits)
        rows, logits = forward.execute([ids, b])
        assert torch.equal(rows, embedding_reference(ids, packed, bits, levels)), bits
        want_rows, want_logits = model(ids, b)
        assert torch.equal(rows, want_rows)
        tol = summation_tolerance(rows.reshape(3, 100), packed, bits, None, levels).reshape(logits.shape)
        assert bool(((logits.double() - want_logits.double()).abs() <= tol).all()), bits


@pytest.mark.parametrize("bad", [-1, 40])
def test_embedding_ids_out_of_range_fail_the_call_without_crashing(embedding_method, bad):
    model, forward, ids, packed, levels = embedding_method
    with pytest.raises(RuntimeError):
        forward.execute([torch.tensor([[1, bad, 2]]), ops.bits_tensor(5)])
    rows, _ = forward.execute([ids, ops.bits_tensor(5)])
    assert torch.equal(rows, embedding_reference(ids, packed, 5, levels))


def test_loading_twice_is_a_no_op():
    assert load_executorch_kernels() == load_executorch_kernels()


class Int8Layer(OneLayer):
    """OneLayer with the int8-activation setting as the node's constant argument (docs/FORMAT.md §9)."""

    def __init__(self, layer: SEFPLinear, act_int8_max_bits: int):
        super().__init__(layer)
        self.act = act_int8_max_bits

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return ops.sefp_linear(x, m.p0, m.p1, m.p2, m.p3, m.exponents, bits, m.bias, m.levels, self.act)


def _int8_levels(rule: str):
    from otaro_export import activation_quant as aq

    levels = level_tables()[rule]
    # as the exporter stores them with int8 activations on: E5M3/E5M4 rows on the int8 grid, so the integer
    # kernels run (a table off the grid takes the float path on fq(x), covered by the "generic" rule)
    return aq.round_levels_to_int8_grid(levels, 4) if rule == "fitted" else levels


@pytest.fixture(scope="module")
def int8_methods():
    """rule -> (model, forward) of a 48x200 layer (K = 200: a partial last group) with act_int8_max_bits = 4."""
    _, packed, bias = exact_problem(48, 200, 6, seed=7)
    out, keep = {}, []
    for rule in ("floor", "fitted", "generic"):
        model = Int8Layer(SEFPLinear(packed, bias, levels=_int8_levels(rule)), 4).eval()
        rows = torch.export.Dim("rows", min=1, max=8)  # decode (1 row) and prefill (6) through one method
        targets, alive, forward = _program(model, (torch.randn(2, 200), ops.bits_tensor(8)), ({0: rows}, None))
        assert "otaro.sefp_linear.out" in targets, targets
        keep.append(alive)
        out[rule] = (model, forward)
    yield out
    del out, keep


@pytest.mark.parametrize("rule", ["floor", "fitted", "generic"])
def test_int8_activations_every_precision_match_the_reference(int8_methods, rule):
    """The fused kernel with act_int8_max_bits = 4 equals the torch reference (fq(x) @ W_k^T at E5M3/E5M4,
    x @ W_k^T above) at every precision, decode (1 row: the integer kernels) and prefill (6 rows: the float
    path on fq(x)). Tolerance as the onnxruntime kernel's int8 test: both sides multiply the same fq(x) by the
    same exact weights, so they differ by float32 summation order only (2 gamma_{K+2} sum |x w| + |b|)."""
    from otaro_export import activation_quant as aq

    model, forward = int8_methods[rule]
    layer = model.layer
    for rows in (1, 6):
        x = torch.randn(rows, 200, generator=torch.Generator().manual_seed(rows)) * 2
        for bits in range(3, 9):
            (got,) = forward.execute([x, ops.bits_tensor(bits)])
            want = model(x, ops.bits_tensor(bits))
            xq = aq.fake_quantize(x) if bits <= 4 else x
            tol = summation_tolerance(xq, layer.packed(), bits, layer.bias, layer.levels)
            assert bool(((got.double() - want.double()).abs() <= tol).all()), (rule, rows, bits)


def test_int8_setting_changes_e5m3_and_leaves_e5m5(int8_methods):
    """Against the float program of the same op (the setting omitted): different at E5M3, equal from E5M5."""
    _, packed, bias = exact_problem(48, 200, 6, seed=7)
    model, forward = int8_methods["floor"]
    plain = OneLayer(SEFPLinear(packed, bias)).eval()
    _, alive, plain_forward = _program(plain, (torch.randn(1, 200), ops.bits_tensor(8)))
    x = torch.randn(1, 200, generator=torch.Generator().manual_seed(3))
    (int8_3,), (float_3,) = forward.execute([x, ops.bits_tensor(3)]), plain_forward.execute([x, ops.bits_tensor(3)])
    assert (int8_3 - float_3).abs().max() > 1e-3
    (int8_5,), (float_5,) = forward.execute([x, ops.bits_tensor(5)]), plain_forward.execute([x, ops.bits_tensor(5)])
    assert torch.equal(int8_5, float_5)


def _drop_int8_argument(program) -> bytes:
    """The program as an emitter from before ``act_int8_max_bits`` wrote it: each sefp_linear.out call
    without that value (x, p0..p3, exponents, bits, bias, levels, out, returned out)."""
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary

    pte_file = deserialize_pte_binary(program.buffer)
    plan = pte_file.program.execution_plan[0]
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
    dropped = 0
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ == "KernelCall" and names[args.op_index] == "otaro::sefp_linear.out":
                assert len(args.args) == 12 and type(plan.values[args.args[9]].val).__name__ == "Int"
                args.args = args.args[:9] + args.args[10:]
                dropped += 1
    assert dropped == 1
    return bytes(serialize_pte_binary(pte_file))


def test_a_program_emitted_before_the_setting_existed_still_runs_float_activations():
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    load_executorch_kernels()
    _, packed, bias = exact_problem(48, 200, 6, seed=7)
    model = Int8Layer(SEFPLinear(packed, bias), 4).eval()
    program = to_edge(torch.export.export(model, (torch.randn(1, 200), ops.bits_tensor(8)))).to_executorch()
    old = _drop_int8_argument(program)
    loaded = Runtime.get().load_program(old)
    forward = loaded.load_method("forward")
    x = torch.randn(1, 200, generator=torch.Generator().manual_seed(4))
    for bits in (3, 8):
        (got,) = forward.execute([x, ops.bits_tensor(bits)])
        want = OneLayer(model.layer)(x, ops.bits_tensor(bits))  # float activations: the op without the setting
        tol = summation_tolerance(x, packed, bits, bias)
        assert bool(((got.double() - want.double()).abs() <= tol).all()), bits
    (int8_3,) = Runtime.get().load_program(program.buffer).load_method("forward").execute([x, ops.bits_tensor(3)])
    assert (int8_3 - forward.execute([x, ops.bits_tensor(3)])[0]).abs().max() > 1e-3


@pytest.mark.parametrize("bad", [1, 9, -4])
def test_int8_setting_out_of_range_fails_the_call_without_crashing(bad):
    """A .pte whose call carries a bad act_int8_max_bits (torch refuses to export one; written by hand)."""
    from executorch.exir import to_edge
    from executorch.exir._serialize._program import deserialize_pte_binary, serialize_pte_binary
    from executorch.runtime import Runtime

    load_executorch_kernels()
    _, packed, bias = exact_problem(16, 64, 1, seed=2)
    model = Int8Layer(SEFPLinear(packed, bias), 4).eval()
    program = to_edge(torch.export.export(model, (torch.randn(1, 64), ops.bits_tensor(8)))).to_executorch()
    pte_file = deserialize_pte_binary(program.buffer)
    values = pte_file.program.execution_plan[0].values
    ints = [v.val for v in values if type(v.val).__name__ == "Int" and v.val.int_val == 4]
    assert len(ints) == 1
    ints[0].int_val = bad
    forward = Runtime.get().load_program(bytes(serialize_pte_binary(pte_file))).load_method("forward")
    with pytest.raises(RuntimeError):
        forward.execute([torch.randn(1, 64), ops.bits_tensor(3)])
