"""merge_duplicate_nodes: one copy of each duplicate pure computation; mutated state, outputs and types respected."""

import collections

import torch
from torch import nn

from otaro_export.passes.merge_duplicate_nodes import merge_duplicate_nodes


def _targets(ep) -> collections.Counter:
    return collections.Counter(str(n.target) for n in ep.graph.nodes if n.op == "call_function")


class SharedTables(nn.Module):
    """Two branches that build the same table from ``bits`` and literals (as two decomposed SEFP ops do)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(5, 8))

    def branch(self, x, bits):
        table = torch.pow(2, torch.arange(8, dtype=torch.int64)) * (bits + 1)
        return x * table.to(torch.float32)

    def forward(self, x, bits):
        return self.branch(x, bits) @ self.w.T + self.branch(x + 1, bits) @ self.w.T


def test_duplicates_of_bits_and_literals_are_merged_and_results_kept():
    module = SharedTables().eval()
    x, bits = torch.randn(3, 8), torch.tensor(4)
    ep = torch.export.export(module, (x, bits))
    before = _targets(ep)
    assert before["aten.arange.start_step"] + before["aten.arange.default"] == 2
    ep, merged = merge_duplicate_nodes(ep)
    after = _targets(ep)
    assert merged >= 4  # arange, pow, bits + 1, mul, to: one copy each
    assert after["aten.arange.start_step"] + after["aten.arange.default"] == 1
    # the nodes that read x differently (x vs x + 1) stay two
    assert after["aten.mul.Tensor"] == before["aten.mul.Tensor"] - 1
    torch.testing.assert_close(ep.module()(x, bits), module(x, bits), rtol=0, atol=0)
    ep.graph.lint()


class IntScalars(nn.Module):
    def forward(self, x):
        return x * 2, x * 2.0  # an integer and a float result: equal-looking literals of different types


def test_literals_of_different_types_are_not_merged():
    x = torch.arange(4, dtype=torch.int32)
    ep = torch.export.export(IntScalars(), (x,))
    ep, _ = merge_duplicate_nodes(ep)
    a, b = ep.module()(x)
    assert a.dtype == torch.int32 and b.dtype == torch.float32


class MutatedBuffer(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("cache", torch.zeros(4))
        self.register_buffer("table", torch.arange(4.0))

    def forward(self, x):
        a = self.cache * 3 + self.table * 2
        self.cache.add_(x)
        b = self.cache * 3 + self.table * 2
        return a + b


def test_reads_before_and_after_a_buffer_update_are_not_merged():
    module = MutatedBuffer()
    x = torch.ones(4)
    ep = torch.export.export(module, (x,))
    muls_before = _targets(ep)["aten.mul.Tensor"]
    ep, merged = merge_duplicate_nodes(ep)
    # table * 2 is computed once; cache * 3 (before and after the update) twice
    assert merged == 1 and _targets(ep)["aten.mul.Tensor"] == muls_before - 1
    want = MutatedBuffer()(x)
    torch.testing.assert_close(ep.module()(x), want)


class DuplicateOutputs(nn.Module):
    def forward(self, bits):
        return torch.arange(3) * bits, torch.arange(3) * bits


def test_program_outputs_keep_their_nodes():
    ep = torch.export.export(DuplicateOutputs(), (torch.tensor(2),))
    ep, _ = merge_duplicate_nodes(ep)
    outputs = ep.graph.output_node().args[0]
    assert len({o.name for o in outputs}) == 2  # the signature names both
    a, b = ep.module()(torch.tensor(2))
    assert torch.equal(a, b) and torch.equal(a, torch.tensor([0, 2, 4]))


def test_nothing_to_merge_leaves_the_program_as_it_is():
    ep = torch.export.export(nn.Linear(4, 3), (torch.randn(2, 4),))
    nodes = [n.name for n in ep.graph.nodes]
    ep2, merged = merge_duplicate_nodes(ep)
    assert merged == 0 and ep2 is ep and [n.name for n in ep2.graph.nodes] == nodes
