"""Pass: give every ``otaro::sefp_linear`` node the int8-activation setting ``act_int8_max_bits``.

Runs after ``lower_to_sefp`` (the ExecuTorch exporter; the ONNX exporter sets the
node attribute of the same name on its graph instead). A node at effective
precision ``bits <= act_int8_max_bits`` (its ``bits`` argument, already
``clamp_min(bits, floor)`` for a floored layer) quantizes its input to int8 per
block of 64 features (docs/FORMAT.md §9). The value is a constant of each node:
the fused kernel passes it to the core, ``decompose_sefp_linear`` builds the same
quantization from Core ATen ops. 0 leaves the nodes as they were (the schema's
default: float activations).
"""

from __future__ import annotations

import logging

from torch.export import ExportedProgram

from otaro_export import activation_quant, ops
from otaro_export.passes import program_utils as pu

log = logging.getLogger(__name__)

ARG_NAME = "act_int8_max_bits"
ARG_INDEX = 9  # x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits


def set_int8_activations(ep: ExportedProgram, max_bits: int) -> tuple[ExportedProgram, int]:
    """Set ``act_int8_max_bits = max_bits`` on every ``otaro::sefp_linear`` node (in place); returns
    ``(ep, nodes changed)``."""
    activation_quant.check_max_bits(max_bits)
    count = 0
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target is not ops.sefp_linear:
            continue
        if len(node.args) > ARG_INDEX:
            node.update_arg(ARG_INDEX, max_bits)
        elif max_bits:
            node.update_kwarg(ARG_NAME, max_bits)
        elif ARG_NAME in node.kwargs:
            node.kwargs = {k: v for k, v in node.kwargs.items() if k != ARG_NAME}
        count += 1
    if count:
        pu.finish(ep)
    log.info("set_int8_activations: %d sefp_linear nodes at act_int8_max_bits=%d", count, max_bits)
    return ep, count
