"""Pass: remove parameters, buffers and lifted constants that nothing reads any more.

After lowering, the float weights of SEFP layers (and the lowering pass's
temporary precision constant, or per-layer ``bits`` buffers) are dead
placeholders; dropping them here keeps the float weights out of every
artifact. ``lower_to_sefp`` restricts the pass to the inputs the lowering made
dead; called without ``targets`` it drops every unused lifted input. Mutated buffers (e.g. static KV caches) and user inputs are never
touched. Dead computation left behind is removed first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch.export import ExportedProgram

from otaro_export.passes import program_utils as pu

log = logging.getLogger(__name__)


@dataclass
class DropResult:
    dropped: list[str] = field(default_factory=list)  # target FQNs removed

    @property
    def count(self) -> int:
        return len(self.dropped)


def drop_unused_inputs(ep: ExportedProgram, targets: Iterable[str] | None = None) -> tuple[ExportedProgram, DropResult]:
    """Drop unused lifted inputs (in place); with ``targets``, only those FQNs are candidates."""
    result = DropResult()
    candidates = None if targets is None else set(targets)
    ep.graph.eliminate_dead_code()
    mutated = set(ep.graph_signature.buffers_to_mutate.values()) | set(
        getattr(ep.graph_signature, "parameters_to_mutate", {}).values()
    )
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")}
    dead = []
    for node in pu.placeholders(ep):
        spec = specs.get(node.name)
        if spec is None or spec.kind not in pu.LIFTED_KINDS or node.users or spec.target in mutated:
            continue
        if candidates is not None and spec.target not in candidates:
            continue
        dead.append(node)
    result.dropped = pu.remove_placeholders(ep, dead)
    if result.count == 0:
        log.warning("drop_unused_inputs: every lifted input is still used; nothing to drop")
    pu.finish(ep)
    log.info("drop_unused_inputs: dropped %d unused inputs", result.count)
    return ep, result
