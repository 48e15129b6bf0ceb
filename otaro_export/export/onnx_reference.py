"""The torch reference of an exported ONNX artifact: its own stored bits, dequantized by the spec.

:func:`reference_decoder` reads the SEFP planes, exponents and reconstruction
tables out of ``model.onnx`` (+ data file), dequantizes each layer at
``max(bits, its precision floor)`` with :mod:`otaro_export.sefp` (docs/FORMAT.md
§2-§3, §6), quantizes the inputs of the layers that run with int8 activations at
that precision (§9, :mod:`otaro_export.activation_quant`), and loads the float weights into an
:class:`~otaro_export.export.llm_decoder.ExportDecoder` built from the source
model, whose attention and norms run their torch references. Parity tests
compare every runtime and precision against it: any difference is the
runtime's (kernels, graph), not the encoder's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from otaro_export import activation_quant
from otaro_export.export.llm_decoder import ExportDecoder
from otaro_export.manifest import Manifest
from otaro_export.packing import PLANE_NAMES, unpack
from otaro_export.sefp import check_bits


def stored_layers(directory: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer: {"p0".."p3", "exponents"[, "levels"]: tensor}}`` for every SEFP layer in the artifact."""
    directory = Path(directory)
    manifest = Manifest.load(directory)
    model = onnx.load(str(directory / manifest.artifact), load_external_data=True)
    init = {t.name: t for t in model.graph.initializer}
    layers = {}
    for layer in manifest.quantized_layers:
        tensors = {}
        for key in (*PLANE_NAMES, "exponents", "levels"):
            proto = init.get(f"{layer}.sefp_{key}")
            if proto is not None:
                tensors[key] = torch.from_numpy(np.array(numpy_helper.to_array(proto)))
        layers[layer] = tensors
    return layers


def reference_decoder(directory: str | Path, hf_model: torch.nn.Module, bits: int) -> ExportDecoder:
    """An ExportDecoder of ``hf_model`` whose SEFP layers hold the artifact's weights at E5M``bits``."""
    bits = check_bits(bits)
    manifest = Manifest.load(directory)
    floors = manifest.extra.get("precision_floors", {})
    int8_max_bits = int(manifest.extra.get("sefp_recipe", {}).get("int8_activations", 0))
    decoder = ExportDecoder(hf_model, int(manifest.model["max_seq_len"]))
    with torch.no_grad():
        for layer, t in stored_layers(directory).items():
            linear = decoder.get_submodule(layer)
            weight = unpack(t["p0"], t["p1"], t["p2"], t["p3"], t["exponents"], linear.in_features)
            effective = max(bits, floors.get(layer, bits))
            linear.weight.copy_(weight.dequantize(effective, t.get("levels")))
            if int8_max_bits and activation_quant.applies(effective, int8_max_bits):
                linear.register_forward_pre_hook(_quantize_input)
    return decoder  # a tied lm_head shares its Parameter with the embedding: both now read the SEFP weight


def _quantize_input(_module, args):
    return (activation_quant.fake_quantize(args[0]), *args[1:])


def reference_logits(decoder: ExportDecoder, ids: torch.Tensor) -> torch.Tensor:
    """Logits of every position of ``ids`` ``[1, S]`` from an empty cache, float32 ``[1, S, V]``."""
    with torch.no_grad():
        return decoder(*decoder.step_inputs(ids, 0), *decoder.empty_cache())[0]
