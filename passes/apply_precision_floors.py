"""Pass: make each SEFP node with a precision floor run at ``max(bits, floor)`` (docs/FORMAT.md §6).

Runs after ``thread_bits_input``: every SEFP node reads the model-level
``bits`` input. For each distinct floor above E5M3 one ``clamp_min(bits,
floor)`` node is added, and the nodes of layers with that floor read it
instead, so a layer kept at E5M5 reads its E5M5 planes even when the caller
asks for E5M3. Kernels and ops are unchanged; the floors themselves are
recorded in the manifest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from otaro_export.passes import program_utils as pu
from otaro_export.passes.freeze_sefp_weights import FreezeResult
from otaro_export.passes.thread_bits_input import BITS_ARG_INDEX, SEFP_TARGETS
from otaro_export.sefp import SUPPORTED_BITS

log = logging.getLogger(__name__)


@dataclass
class FloorResult:
    floors: dict[str, int] = field(default_factory=dict)  # layer FQN -> floor, for layers above E5M3
    nodes: int = 0  # SEFP nodes now reading a clamped precision


def apply_precision_floors(ep: ExportedProgram, frozen: FreezeResult) -> tuple[ExportedProgram, FloorResult]:
    """Route each floored layer's SEFP nodes through ``clamp_min(bits, floor)`` (in place)."""
    result = FloorResult()
    by_planes = {layer.planes["p0"]: layer for layer in frozen.layers.values()}
    clamped: dict[int, torch.fx.Node] = {}
    for node in list(ep.graph.nodes):
        if node.op != "call_function" or node.target not in SEFP_TARGETS:
            continue
        layer = by_planes.get(node.args[1])
        if layer is None or layer.min_bits <= SUPPORTED_BITS[0]:
            continue
        bits = node.args[BITS_ARG_INDEX]
        if layer.min_bits not in clamped:
            with ep.graph.inserting_after(bits):
                clamp = ep.graph.call_function(torch.ops.aten.clamp_min.default, (bits, layer.min_bits))
            if "val" in bits.meta:
                clamp.meta["val"] = bits.meta["val"]
            clamped[layer.min_bits] = clamp
        node.update_arg(BITS_ARG_INDEX, clamped[layer.min_bits])
        result.floors[layer.name] = layer.min_bits
        result.nodes += 1
    if result.nodes:
        pu.finish(ep)
    log.info("apply_precision_floors: %d SEFP nodes clamped (%s)", result.nodes, sorted(set(result.floors.values())))
    return ep, result
