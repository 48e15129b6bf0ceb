"""decompose_sefp_embedding: otaro.sefp_embedding -> Core ATen ops, bit-exact rows, runs on stock ExecuTorch."""

import pytest
import torch
from test_decompose_sefp_linear import RULES, tables
from torch import nn

from otaro_export import ops, packing, sefp
from otaro_export.passes.decompose_sefp_embedding import (
    count_sefp_embedding_nodes,
    decompose_sefp_embedding,
    sefp_embedding_decomposition,
)
from otaro_export.passes.decompose_sefp_linear import count_sefp_nodes, decompose_sefp_linear

V, K = 50, 100  # K % 64 != 0: the padded last group is cut off


def _packed(seed=0):
    w = torch.randn(V, K, generator=torch.Generator().manual_seed(seed)) * torch.logspace(-3, 2, K)
    return packing.pack(sefp.quantize(w))


class TiedEmbedding(nn.Module):
    """Embedding rows and logits from one set of planes, sharing the runtime ``bits``."""

    def __init__(self, levels=None):
        super().__init__()
        p = _packed()
        for name, t in zip(packing.PLANE_NAMES, p.planes()):
            self.register_buffer(name, t)
        self.register_buffer("exponents", p.exponents)
        self.levels = levels

    def forward(self, ids, bits):
        planes = (self.p0, self.p1, self.p2, self.p3, self.exponents, bits)
        h = ops.sefp_embedding(ids, *planes, K, self.levels)
        return ops.sefp_linear(torch.relu(h), *planes, None, self.levels)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("bits", sefp.SUPPORTED_BITS)
def test_decomposition_equals_reference_op_exactly(bits, rule):
    p, levels = _packed(1), tables()[rule]
    ids = torch.tensor([[0, V - 1, 3], [7, 7, 20]])
    args = (ids, *p.planes(), p.exponents, ops.bits_tensor(bits), K, levels)
    got = sefp_embedding_decomposition(*args)
    assert got.shape == (2, 3, K)
    assert torch.equal(got, ops.sefp_embedding(*args))


@pytest.mark.parametrize("bad", [-1, V, 10**6])
def test_ids_out_of_range_raise(bad):
    p = _packed()
    with pytest.raises(IndexError):
        sefp_embedding_decomposition(torch.tensor([1, bad]), *p.planes(), p.exponents, ops.bits_tensor(5), K)


@pytest.fixture(scope="module")
def decomposed():
    module = TiedEmbedding(levels=tables()["fitted"]).eval()
    ids = torch.tensor([[1, 2, 3]])
    seq = torch.export.Dim("seq", min=1, max=16)
    ep = torch.export.export(module, (ids, ops.bits_tensor(8)), dynamic_shapes=({1: seq}, None), strict=True)
    assert count_sefp_embedding_nodes(ep) == 1 and count_sefp_nodes(ep) == 1
    return module, decompose_sefp_linear(decompose_sefp_embedding(ep))


def test_pass_removes_every_node_and_keeps_results(decomposed):
    module, ep = decomposed
    assert count_sefp_embedding_nodes(ep) == 0 and count_sefp_nodes(ep) == 0
    ids = torch.tensor([[4, 49, 0, 8]])  # another length than the example: the seq dim stays dynamic
    for bits in sefp.SUPPORTED_BITS:
        b = ops.bits_tensor(bits)
        assert torch.equal(ep.module()(ids, b), module(ids, b)), bits


def test_pass_is_identity_without_embedding_nodes():
    ep = torch.export.export(nn.Embedding(4, 3), (torch.tensor([1]),))
    assert decompose_sefp_embedding(ep) is ep


def test_decomposed_program_is_core_aten_and_runs_on_stock_executorch(decomposed):
    """to_edge with IR checks on (Core ATen only), then the stock portable runtime, no project library."""
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    module, ep = decomposed
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=True)).to_executorch()
    targets = {str(n.target) for n in program.exported_program().graph.nodes if n.op == "call_function"}
    assert not any("otaro" in t for t in targets)
    method = Runtime.get().load_program(program.buffer).load_method("forward")
    ids = torch.tensor([[4, 49, 0]])
    for bits in sefp.SUPPORTED_BITS:
        (got,) = method.execute([ids, ops.bits_tensor(bits)])
        # exact rows and weights; the portable mm sums in its own order: float32 rounding of ~100 terms
        torch.testing.assert_close(got, module(ids, ops.bits_tensor(bits)), rtol=1e-4, atol=1e-3)
    for bad in (-1, V):  # the index_select range check in the portable kernel
        with pytest.raises(RuntimeError):
            method.execute([torch.tensor([[1, bad, 2]]), ops.bits_tensor(5)])
    with pytest.raises(RuntimeError):
        method.execute([ids, torch.tensor(9, dtype=torch.int64)])
