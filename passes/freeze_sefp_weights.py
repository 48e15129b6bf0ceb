"""Pass: freeze the selected layers' float weights into packed SEFP constants.

For each layer FQN (``otaro_export.convert.select_sefp_linears``), find its
``<layer>.weight`` input in the program (a parameter, buffer or lifted
constant; the program may come from a wrapper, so ``model.<layer>.weight``
matches too), quantize it with :func:`otaro_export.sefp.quantize` (M8, errors
name the layer), pack it with :func:`otaro_export.packing.pack` and add the
planes ``p0..p3`` and ``exponents`` as lifted constants. The float weight
input is left in place (its users are rewritten by ``lower_sefp_linears`` and
``drop_unused_inputs`` removes it once nothing uses it).

Each layer may come with a :class:`SEFPLayerSpec`: its own encoder (which may
choose exponents other than the paper's, docs/FORMAT.md §1) returning a
reconstruction table (§3), stored as one more constant, ``levels``, and a
precision floor (§6) that ``apply_precision_floors`` wires in later.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.export import ExportedProgram

from otaro_export.errors import OtaroError
from otaro_export.packing import PLANE_NAMES, pack
from otaro_export.passes import program_utils as pu
from otaro_export.sefp import SEFPWeight, check_bits, check_levels, quantize

log = logging.getLogger(__name__)


class LayerNotFoundError(OtaroError, KeyError):
    """A layer selected for SEFP has no (unique) weight in the exported program."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


#: ``encode(weight, name) -> (SEFPWeight, levels or None)``; ``None`` levels is the paper's floor rule
Encoder = Callable[[torch.Tensor, str], tuple[SEFPWeight, "torch.Tensor | None"]]


def paper_encoder(weight: torch.Tensor, name: str) -> tuple[SEFPWeight, None]:
    """The paper's encoder and decoder: floor(log2 max) exponents, floor reconstruction."""
    return quantize(weight, name=name), None


@dataclass
class SEFPLayerSpec:
    """How one layer becomes SEFP: its encoder (+ reconstruction table) and its precision floor."""

    encode: Encoder = paper_encoder
    min_bits: int = 3

    def __post_init__(self) -> None:
        self.min_bits = check_bits(self.min_bits)


@dataclass
class FrozenLayer:
    name: str  # module FQN as given (HF model naming)
    weight_node: torch.fx.Node  # the float weight placeholder
    planes: dict[str, torch.fx.Node]  # "p0".."p3", "exponents" (and "levels" if the rule has a table)
    out_features: int
    in_features: int
    min_bits: int = 3


@dataclass
class FreezeResult:
    layers: dict[str, FrozenLayer] = field(default_factory=dict)  # keyed by weight placeholder name

    @property
    def count(self) -> int:
        return len(self.layers)


def find_weight_input(ep: ExportedProgram, layer: str, lifted=None):
    """The unique lifted input named ``<layer>.weight`` (optionally under a wrapper prefix)."""
    lifted = pu.lifted_inputs(ep) if lifted is None else lifted
    want = f"{layer}.weight"
    hits = [t for t in lifted if t == want or t.endswith("." + want)]
    if len(hits) > 1 and want in hits:
        hits = [want]
    if not hits:
        raise LayerNotFoundError(
            f"SEFP layer {layer!r}: no weight named {want!r} among the exported program's parameters, "
            "buffers or constants (was the program exported from this model?)"
        )
    if len(hits) > 1:
        raise LayerNotFoundError(f"SEFP layer {layer!r}: ambiguous, several inputs match: {hits}")
    target = hits[0]
    node, _ = lifted[target]
    if not node.users:
        # Tied weights (lm_head / embedding) are lifted once under one of their names; the
        # graph reads that one. Follow it so the layer's linear is found.
        tensor = pu.lifted_tensor(ep, lifted[target][1])
        for other, (other_node, other_spec) in lifted.items():
            if other_node.users and other_spec.kind in pu.LIFTED_KINDS:
                candidate = pu.lifted_tensor(ep, other_spec)
                if candidate.shape == tensor.shape and candidate.data_ptr() == tensor.data_ptr():
                    return other, lifted[other]
    return target, lifted[target]


def freeze_sefp_weights(
    ep: ExportedProgram, layers: list[str] | dict[str, SEFPLayerSpec], progress: bool = False
) -> tuple[ExportedProgram, FreezeResult]:
    """Add packed SEFP constants for every layer in ``layers`` (FQNs, or FQN -> spec), in place."""
    result = FreezeResult()
    specs = layers if isinstance(layers, dict) else {name: SEFPLayerSpec() for name in layers}
    if not specs:
        log.warning("freeze_sefp_weights: no layers selected, nothing to freeze")
        return ep, result
    lifted = pu.lifted_inputs(ep)
    pending = []  # (layer, weight node, packed, levels, target stem, floor)
    iterator = specs.items()
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(specs), desc="SEFP encode", unit="layer", leave=False)
    for layer, layer_spec in iterator:
        target, (node, input_spec) = find_weight_input(ep, layer, lifted)
        if any(p[1] is node for p in pending):
            raise ValueError(f"SEFP layer {layer!r} listed twice")
        weight = pu.lifted_tensor(ep, input_spec)
        if weight.dim() != 2 or not weight.is_floating_point():
            raise ValueError(
                f"SEFP layer {layer!r}: weight {target} must be a 2-D float tensor, "
                f"got {weight.dtype} {list(weight.shape)}"
            )
        with torch.no_grad():
            encoded, levels = layer_spec.encode(weight.detach().to(torch.float32), f"{layer}.weight")
        if levels is not None:
            levels = check_levels(levels, f"{layer} levels").contiguous()
        # constants named after the layer (a tied lm_head is lifted under the embedding's name)
        pending.append((layer, node, pack(encoded), levels, layer, layer_spec.min_bits))
    keys = (*PLANE_NAMES, "exponents")
    constants = {}
    for _, _, packed, levels, stem, _ in pending:
        constants.update({f"{stem}.sefp_{key}": getattr(packed, key) for key in keys})
        if levels is not None:
            constants[f"{stem}.sefp_levels"] = levels
    # one batched insertion: rebuilding the signature per tensor is quadratic in the layer count
    added = pu.add_constants(ep, constants)
    for layer, node, packed, levels, stem, min_bits in pending:
        planes = {key: added[f"{stem}.sefp_{key}"] for key in keys}
        if levels is not None:
            planes["levels"] = added[f"{stem}.sefp_levels"]
        result.layers[node.name] = FrozenLayer(
            layer, node, planes, packed.out_features, packed.in_features, min_bits=min_bits
        )
    log.info("freeze_sefp_weights: froze %d layers", result.count)
    return ep, result
