"""The export's encodings and floor plan are bit for bit what they were before the export-time work (issue 14).

The digests below were taken with the code before it (commit fab2c3e): the floor plan, every layer's
encoding (signs, magnitudes, exponents, levels), its packed planes and its dequantized weights at every
precision, for the tiny model under the default recipe with and without int8 activations, and a larger random layer (several
search chunks, padded K) under every rule. A faster encoder, planner or packer must leave them unchanged.
"""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch

from otaro_export import reconstruction, sefp
from otaro_export.calibration import collect_input_stats
from otaro_export.export.sefp_recipe import calibration_text_samples, default_recipe, encode_layer, plan_layer_floors
from otaro_export.packing import pack
from otaro_export.testing import tiny_causal_lm

#: recorded at fab2c3e, before the export-time changes (the same with 1 or 2 torch threads: every reduction here is
#: below torch's parallel grain)
EXPECTED = {
    "tiny 4": "f85c1f96c0d5fe97e7028999d24d0ac4132ac657086a1c700916d73c65a84d90",
    "tiny 0": "cb1860beb85f0f808e8800d80a3da36ce7e892ecfd8c65169108bd90a560ed32",
    "layer floor floor": "2ba0eacca6e2e422bc9182d69d86e906deafa2a1edfb8fe017d20ccfa0cb72c6",
    "layer floor search": "f45cbda41a825fd8559c8b485df3712b0ff2fe5f6d5efd71d3f6ca119960ec0b",
    "layer center floor": "b88840bf84b308e07ae2754f5aff981f2932a0f65f55ba3c8222c225a68cb5ca",
    "layer center search": "0ea6357f60e8c04f6b01f234634f039903e4516f4fecba508116898fbd14038d",
    "layer fitted floor": "5da57734594892a27491075f29c73fa26a3a73ba70257a2c9efd82895b359a68",
    "layer fitted search": "6bbaf5b610923e42c11e5a02e232bfbfa2bf80ae789688a3442317630967e317",
}


def _tensor(h, t: torch.Tensor | None) -> None:
    if t is None:
        h.update(b"none")
        return
    t = t.detach().contiguous()
    h.update(f"{t.dtype}{list(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def _encoding(h, q: sefp.SEFPWeight, levels: torch.Tensor | None) -> None:
    for t in (q.signs, q.magnitudes, q.exponents, levels, *pack(q).planes()):
        _tensor(h, t)
    for bits in sefp.SUPPORTED_BITS:
        _tensor(h, q.dequantize(bits, levels))


def _floats(h, values) -> None:
    h.update(b"".join(struct.pack("<d", float(v)) for v in values))


def model_digest(int8_activations: int) -> str:
    loaded = tiny_causal_lm(seed=0)
    model, tokenizer = loaded.model, loaded.tokenizer
    recipe = default_recipe(int8_activations=int8_activations).for_target("onnx")
    units = reconstruction.export_units(model)
    samples = calibration_text_samples(tokenizer)
    stats = collect_input_stats(model, samples, sorted({u.members[0] for u in units}))
    plan = plan_layer_floors(model, tokenizer, units, recipe, stats=stats, samples=samples)
    h = hashlib.sha256()
    h.update(repr(sorted(plan.floors.items())).encode())
    for key in ("bits_per_weight", "bytes_per_token", "predicted_kl"):
        _floats(h, [v for _, v in sorted(getattr(plan, key).items())])
    for unit in units:
        w = reconstruction.unit_weight(model, unit)
        _encoding(h, *encode_layer(recipe, unit.name, w, stats[unit.members[0]].importance()))
    return h.hexdigest()


def layer_digest(rule: str, exponent_rule: str) -> str:
    generator = torch.Generator().manual_seed(14)
    w = torch.randn(2100, 200, generator=generator) * torch.rand(2100, 1, generator=generator)
    w[5, :64] = 0.0  # an all-zero group
    importance = torch.rand(200, generator=generator) ** 2
    fisher = torch.rand(2100, 200, generator=generator)
    q, levels = reconstruction.quantize_layer(w, rule, exponent_rule, importance, int8_max_bits=4)
    h = hashlib.sha256()
    _encoding(h, q, levels)
    _floats(h, reconstruction.predicted_kl(w, q, levels, fisher).values())
    return h.hexdigest()


def digests() -> dict[str, str]:
    out = {f"tiny {bits}": model_digest(bits) for bits in (4, 0)}
    for rule in sefp.RECONSTRUCTION_RULES:
        for exponent_rule in sefp.EXPONENT_RULES:
            out[f"layer {rule} {exponent_rule}"] = layer_digest(rule, exponent_rule)
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_encodings_and_plan_are_unchanged(name):
    kind, *args = name.split()
    got = model_digest(int(args[0])) if kind == "tiny" else layer_digest(*args)
    assert got == EXPECTED[name]
