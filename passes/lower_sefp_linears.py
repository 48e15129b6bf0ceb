"""Pass: rewrite ``aten.linear(x, W, b)`` on frozen weights to ``otaro.sefp_linear``.

Input: the :class:`FreezeResult` of ``freeze_sefp_weights``. Every
``aten.linear.default`` whose weight is a frozen placeholder becomes
``otaro.sefp_linear.default(x, p0, p1, p2, p3, exponents, bits, bias[, levels])``.
Until ``thread_bits_input`` wires the model-level input, ``bits`` is one shared
lifted constant (E5M8), so the program stays runnable after this pass alone.
A frozen layer whose weight reaches no ``aten.linear`` is an error (it would
silently stay float otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from otaro_export import ops
from otaro_export.passes import program_utils as pu
from otaro_export.passes.freeze_sefp_weights import FreezeResult

log = logging.getLogger(__name__)

DEFAULT_BITS_TARGET = "otaro_default_bits"
_LINEAR = torch.ops.aten.linear.default


@dataclass
class LowerResult:
    lowered: list[str] = field(default_factory=list)  # layer FQN per rewritten node

    @property
    def count(self) -> int:
        return len(self.lowered)


def _linear_parts(node: torch.fx.Node):
    x, weight = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    return x, weight, bias


def lower_sefp_linears(ep: ExportedProgram, frozen: FreezeResult) -> tuple[ExportedProgram, LowerResult]:
    """Replace the linears of ``frozen`` layers by SEFP nodes (in place)."""
    result = LowerResult()
    if not frozen.layers:
        log.warning("lower_sefp_linears: no frozen layers, nothing to lower")
        return ep, result
    default_bits = pu.add_constant(ep, DEFAULT_BITS_TARGET, ops.bits_tensor(8))
    graph = ep.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != _LINEAR:
            continue
        x, weight, bias = _linear_parts(node)
        layer = frozen.layers.get(getattr(weight, "name", None))
        if layer is None:
            continue
        x_val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if x_val is not None and x_val.dtype != torch.float32:
            raise TypeError(
                f"SEFP layer {layer.name!r}: activations are {x_val.dtype}; otaro.sefp_linear takes float32 "
                "(export the model in float32)"
            )
        p = layer.planes
        args = (x, p["p0"], p["p1"], p["p2"], p["p3"], p["exponents"], default_bits, bias)
        if "levels" in p:
            args = (*args, p["levels"])
        with graph.inserting_before(node):
            new = graph.call_function(ops.sefp_linear, args)
        new.meta.update(node.meta)
        pu.replace_node(ep, node, new)  # the linear may be a graph output (e.g. lm_head's logits)
        result.lowered.append(layer.name)
    missing = sorted({lay.name for lay in frozen.layers.values()} - set(result.lowered))
    if missing:
        raise RuntimeError(
            f"SEFP layers {missing} have no aten.linear node in the exported program "
            "(export with torch.export.export before run_decompositions)"
        )
    pu.finish(ep)
    log.info("lower_sefp_linears: lowered %d linear nodes", result.count)
    return ep, result
