"""``lower_to_sefp``: the one entry point both exporters (ONNX, ExecuTorch) call.

Runs, in order: ``freeze_sefp_weights`` -> ``lower_sefp_linears`` ->
``lower_sefp_embedding`` -> ``thread_bits_input`` -> ``apply_precision_floors``
-> ``drop_unused_inputs``, and checks that the result is a valid program whose
SEFP nodes all read the model-level ``bits`` input (directly, or through their
layer's precision floor).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from torch.export import ExportedProgram

from otaro_export.passes import program_utils as pu
from otaro_export.passes.apply_precision_floors import apply_precision_floors
from otaro_export.passes.drop_unused_inputs import drop_unused_inputs
from otaro_export.passes.freeze_sefp_weights import SEFPLayerSpec, freeze_sefp_weights
from otaro_export.passes.lower_sefp_embedding import lower_sefp_embedding
from otaro_export.passes.lower_sefp_linears import lower_sefp_linears
from otaro_export.passes.thread_bits_input import BITS_ARG_INDEX, SEFP_TARGETS, thread_bits_input

log = logging.getLogger(__name__)


def _target_of(ep: ExportedProgram, node) -> str | None:
    spec = pu.input_spec(ep, node) if node is not None and getattr(node, "op", None) == "placeholder" else None
    return spec.target if spec is not None and spec.kind in pu.LIFTED_KINDS else None


@dataclass
class LoweringReport:
    layers: list[str] = field(default_factory=list)  # SEFP layer FQNs, in the order given
    sefp_nodes: int = 0  # SEFP nodes (linears and embedding gathers) reading the bits input
    embedding_nodes: int = 0  # of which SEFP embedding gathers (tied weights)
    floors: dict[str, int] = field(default_factory=dict)  # layer FQN -> precision floor above E5M3
    bits_input: str = "bits"
    added_bits_input: bool = False  # the program had no such input and one was appended
    dropped_inputs: list[str] = field(default_factory=list)  # float weights etc. removed
    packed_bytes: int = 0  # bytes of SEFP planes + exponents added as constants
    seconds: float = 0.0

    def summary(self) -> str:
        floors = f", {len(self.floors)} with precision floors" if self.floors else ""
        return (
            f"lowered {len(self.layers)} layers to {self.sefp_nodes} SEFP nodes "
            f"({self.embedding_nodes} embedding gathers{floors}) "
            f"({self.packed_bytes / 2**20:.1f} MiB packed), dropped {len(self.dropped_inputs)} unused inputs, "
            f"bits input {self.bits_input!r}{' (added)' if self.added_bits_input else ''} in {self.seconds:.1f}s"
        )


def lower_to_sefp(
    ep: ExportedProgram,
    layers: list[str] | dict[str, SEFPLayerSpec],
    *,
    bits_input: str = "bits",
    progress: bool = False,
) -> tuple[ExportedProgram, LoweringReport]:
    """Freeze ``layers`` (FQNs, or FQN -> :class:`SEFPLayerSpec`) to SEFP and lower them.

    ``ep`` is transformed in place and returned. Its float weights for those
    layers are gone afterwards (a tied embedding reads the same SEFP planes);
    every SEFP node reads the 0-dim int64 user input ``bits_input`` (added if
    the program had none), clamped to its layer's precision floor.
    """
    t0 = time.perf_counter()
    ep, frozen = freeze_sefp_weights(ep, layers if isinstance(layers, dict) else list(layers), progress=progress)
    ep, lowered = lower_sefp_linears(ep, frozen)
    ep, embedded = lower_sefp_embedding(ep, frozen)
    old_bits = {_target_of(ep, n.args[BITS_ARG_INDEX]) for n in ep.graph.nodes if n.target in SEFP_TARGETS}
    ep, threaded = thread_bits_input(ep, bits_input)
    ep, floored = apply_precision_floors(ep, frozen)
    # Only what this lowering made dead; the caller's other unused state is not ours to drop.
    made_dead = {_target_of(ep, layer.weight_node) for layer in frozen.layers.values()} | old_bits
    ep, dropped = drop_unused_inputs(ep, made_dead - {None})
    constant_of = ep.graph_signature.inputs_to_lifted_tensor_constants
    packed = sum(
        ep.constants[constant_of[n.name]].nbytes for layer in frozen.layers.values() for n in layer.planes.values()
    )
    report = LoweringReport(
        layers=[layer.name for layer in frozen.layers.values()],
        sefp_nodes=threaded.count,
        embedding_nodes=embedded.count,
        floors=floored.floors,
        bits_input=bits_input,
        added_bits_input=threaded.added_input,
        dropped_inputs=dropped.dropped,
        packed_bytes=packed,
        seconds=time.perf_counter() - t0,
    )
    if report.sefp_nodes < lowered.count + embedded.count:
        raise RuntimeError(
            f"only {report.sefp_nodes} of {lowered.count + embedded.count} lowered nodes read {bits_input!r}"
        )
    log.info(report.summary())
    return ep, report
