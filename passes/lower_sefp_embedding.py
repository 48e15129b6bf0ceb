"""Pass: rewrite ``aten.embedding(W, ids)`` on a frozen (tied) weight to ``otaro.sefp_embedding``.

A model whose embedding shares its tensor with ``lm_head`` (tied weights)
exports both as readers of one placeholder. Once ``freeze_sefp_weights`` has
frozen ``lm_head``, this pass makes the gather read the same SEFP planes
(docs/FORMAT.md §5): one copy of the matrix serves the embedding and the
logits, and the float matrix becomes dead for ``drop_unused_inputs``.
Embeddings of weights that were not frozen stay float.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from otaro_export import ops
from otaro_export.passes import program_utils as pu
from otaro_export.passes.freeze_sefp_weights import FreezeResult
from otaro_export.passes.lower_sefp_linears import DEFAULT_BITS_TARGET

log = logging.getLogger(__name__)

_EMBEDDING = torch.ops.aten.embedding.default


@dataclass
class EmbeddingResult:
    lowered: list[str] = field(default_factory=list)  # FQN of the frozen layer each rewritten gather reads

    @property
    def count(self) -> int:
        return len(self.lowered)


def _default_bits(ep: ExportedProgram) -> torch.fx.Node:
    lifted = pu.lifted_inputs(ep)
    if DEFAULT_BITS_TARGET in lifted:
        return lifted[DEFAULT_BITS_TARGET][0]
    return pu.add_constant(ep, DEFAULT_BITS_TARGET, ops.bits_tensor(8))


def lower_sefp_embedding(ep: ExportedProgram, frozen: FreezeResult) -> tuple[ExportedProgram, EmbeddingResult]:
    """Replace gathers from frozen weights by SEFP gathers (in place)."""
    result = EmbeddingResult()
    graph = ep.graph
    bits = None
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != _EMBEDDING:
            continue
        weight, ids = node.args[0], node.args[1]
        layer = frozen.layers.get(getattr(weight, "name", None))
        if layer is None:
            continue
        extra = node.args[2:] + tuple(node.kwargs.values())
        if any(arg not in (-1, False) for arg in extra):  # padding_idx, scale_grad_by_freq, sparse: training only
            raise ValueError(f"SEFP embedding of {layer.name!r}: unsupported aten.embedding arguments {extra}")
        bits = bits or _default_bits(ep)
        p = layer.planes
        args = (ids, p["p0"], p["p1"], p["p2"], p["p3"], p["exponents"], bits, layer.in_features)
        if "levels" in p:
            args = (*args, p["levels"])
        with graph.inserting_before(node):
            new = graph.call_function(ops.sefp_embedding, args)
        new.meta.update(node.meta)
        pu.replace_node(ep, node, new)
        result.lowered.append(layer.name)
    if result.count:
        pu.finish(ep)
    log.info("lower_sefp_embedding: %d gathers read SEFP planes", result.count)
    return ep, result
