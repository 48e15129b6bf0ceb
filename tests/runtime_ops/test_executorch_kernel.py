"""The ExecuTorch kernel library runs otaro::sefp_linear inside ExecuTorch.

One one-layer model is exported once (torch.export -> to_edge -> to_executorch)
with the precision as a runtime input; ONE loaded method then runs bits 3..8.
Exact-case data (sefp_kernel_cases.py) makes the result independent of
summation order, so it must equal the torch reference bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from sefp_kernel_cases import exact_problem, summation_tolerance

from otaro_export import ops
from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels
from otaro_export.sefp_linear import SEFPLinear


class OneLayer(torch.nn.Module):
    def __init__(self, layer: SEFPLinear):
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        m = self.layer
        return ops.sefp_linear(x, m.p0, m.p1, m.p2, m.p3, m.exponents, bits, m.bias)


@pytest.fixture(scope="module")
def method():
    from executorch.exir import to_edge
    from executorch.runtime import Runtime

    load_executorch_kernels()
    x, packed, bias = exact_problem(48, 100, 6, seed=5)  # K = 100: a partial last group
    model = OneLayer(SEFPLinear(packed, bias)).eval()
    example = (x.reshape(2, 3, 100), ops.bits_tensor(8))
    program = to_edge(torch.export.export(model, example)).to_executorch()
    targets = {str(n.target) for n in program.exported_program().graph.nodes if n.op == "call_function"}
    assert "otaro.sefp_linear.out" in targets, targets
    loaded = Runtime.get().load_program(program.buffer)
    forward = loaded.load_method("forward")
    # the method borrows the program's buffer: keep both alive as long as it
    yield model, forward, example[0]
    del forward, loaded, program


def test_one_pte_runs_every_precision(method):
    model, forward, x = method
    for bits in range(3, 9):
        b = ops.bits_tensor(bits)
        (got,) = forward.execute([x, b])
        want = model(x, b)  # the torch reference op
        assert got.shape == (2, 3, 48)
        assert torch.equal(got, want), f"bits={bits}"


def test_float_inputs_within_summation_bound(method):
    model, forward, x = method
    xf = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    packed = model.layer.packed()
    for bits in (3, 8):
        (got,) = forward.execute([xf, ops.bits_tensor(bits)])
        want = model(xf, ops.bits_tensor(bits))
        tol = summation_tolerance(xf.reshape(6, 100), packed, bits, model.layer.bias).reshape(got.shape)
        assert bool(((got.double() - want.double()).abs() <= tol).all())


@pytest.mark.parametrize("bits", [2, 9, -1])
def test_bits_out_of_range_fails_the_call_without_crashing(method, bits):
    model, forward, x = method
    with pytest.raises(RuntimeError):
        forward.execute([x, torch.tensor(bits, dtype=torch.int64)])
    (after,) = forward.execute([x, ops.bits_tensor(4)])  # the method still works afterwards
    assert torch.equal(after, model(x, ops.bits_tensor(4)))


def test_loading_twice_is_a_no_op():
    assert load_executorch_kernels() == load_executorch_kernels()


def test_a_library_loaded_by_anyone_is_found_in_the_process_mappings():
    from otaro_export.runtime_ops.executorch_kernels import _already_mapped

    path = load_executorch_kernels()
    assert _already_mapped() == path.resolve()
