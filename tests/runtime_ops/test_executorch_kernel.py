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


def _program(model, example):
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    load_executorch_kernels()
    program = to_edge(torch.export.export(model, example)).to_executorch()
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
