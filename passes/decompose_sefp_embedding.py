"""Decompose ``otaro::sefp_embedding`` into Core ATen ops that a stock ExecuTorch runtime runs.

The ``--kernels portable`` counterpart of the fused embedding kernel: every
``otaro.sefp_embedding`` node becomes ``index_select`` of the rows ``ids``
from each plane and the exponents, then the same bit-exact dequantization as
:mod:`otaro_export.passes.decompose_sefp_linear` (only the gathered rows are
unpacked: a decode step never dequantizes the table).

Ids outside ``[0, N)`` must be an error, never a silently wrapped row: a
negative id is mapped to ``N`` with ``where``, so every bad id is an
out-of-range ``index_select`` index, which fails in eager and in the portable
kernel. ``bits`` outside 3..8 fails like the linear decomposition's.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from otaro_export import ops
from otaro_export.passes.decompose_sefp_linear import dequantize_planes

__all__ = [
    "decompose_sefp_embedding",
    "decomposition_table",
    "sefp_embedding_decomposition",
    "count_sefp_embedding_nodes",
]

_OVERLOADS = (ops.sefp_embedding, ops.sefp_embedding_out)


def sefp_embedding_decomposition(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None):
    """Core-ATen equivalent of ``otaro::sefp_embedding`` (bit-exact rows)."""
    n = exponents.shape[0]
    flat = ids.reshape(-1)
    safe = torch.where(flat < 0, n, flat)  # negative ids become the out-of-range index n
    rows = [torch.index_select(t, 0, safe) for t in (p0, p1, p2, p3, exponents)]
    weight = dequantize_planes(*rows, bits, levels)
    if in_features != weight.shape[1]:
        weight = weight[:, :in_features]
    return weight.reshape(*ids.shape, in_features)


def _sefp_embedding_out_decomposition(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None, *, out):
    return out.copy_(sefp_embedding_decomposition(ids, p0, p1, p2, p3, exponents, bits, in_features, levels))


def count_sefp_embedding_nodes(ep: ExportedProgram) -> int:
    return sum(1 for node in ep.graph.nodes if node.op == "call_function" and node.target in _OVERLOADS)


def decomposition_table() -> dict:
    """``run_decompositions`` table of this pass (merged with the linear's for one retrace of the program)."""
    return {ops.sefp_embedding: sefp_embedding_decomposition, ops.sefp_embedding_out: _sefp_embedding_out_decomposition}


def decompose_sefp_embedding(ep: ExportedProgram) -> ExportedProgram:
    """Return ``ep`` with every ``otaro::sefp_embedding`` node replaced by Core ATen ops (others untouched)."""
    if count_sefp_embedding_nodes(ep) == 0:
        return ep
    out = ep.run_decompositions(decomposition_table())
    left = count_sefp_embedding_nodes(out)
    if left:
        raise RuntimeError(f"decompose_sefp_embedding: {left} otaro::sefp_embedding node(s) survived decomposition")
    return out
