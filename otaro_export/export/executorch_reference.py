"""The torch reference of an exported ``.pte``: its own stored bits, dequantized by the spec.

The ExecuTorch twin of :mod:`otaro_export.export.onnx_reference`.
:func:`stored_layers` reads the SEFP planes, exponents and reconstruction
tables that the fused program's ``otaro::sefp_linear`` / ``sefp_embedding``
calls read, straight out of ``model.pte`` (or its ``model.ptd``), and names
them by the manifest's ``quantized_layers``. :func:`reference_decoder`
dequantizes each layer at ``max(bits, its precision floor)`` with
:mod:`otaro_export.sefp` (docs/FORMAT.md §2-§3, §6), quantizes the inputs of the
layers that run with int8 activations at that precision (§9, the manifest's
``extra.sefp_recipe.int8_activations``; :mod:`otaro_export.activation_quant`), into an
:class:`~otaro_export.export.llm_decoder.ExportDecoder` of the source model,
whose attention and norms run their torch references: any difference from a
runtime is the runtime's (kernels, graph), not the encoder's.

A ``portable`` program has no SEFP calls (they were decomposed into Core
ATen ops), so its reference re-encodes the source weights with the recipe the
manifest records (the encoders are deterministic); the fused tests check that
the stored planes equal that re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from otaro_export import activation_quant
from otaro_export.errors import ArtifactError
from otaro_export.export.llm_decoder import ExportDecoder
from otaro_export.manifest import Manifest
from otaro_export.packing import PLANE_NAMES, pack, unpack
from otaro_export.sefp import check_bits

_SEFP_OPS = {"otaro::sefp_linear.out": "linear", "otaro::sefp_embedding.out": "embedding"}
_ARG_NAMES = (*PLANE_NAMES, "exponents")
_DTYPES = {0: np.uint8, 1: np.int8, 4: np.int64, 6: np.float32}  # ExecuTorch ScalarType codes


@dataclass
class SEFPCall:
    """One SEFP kernel call of the program: its op kind and the constants it reads."""

    kind: str  # "linear" | "embedding"
    tensors: dict[str, torch.Tensor]  # "p0".."p3", "exponents"[, "levels"]
    buffer_ids: tuple  # where each constant lives (data buffer index or external key): identity of storage


def _external_data(directory: Path, manifest: Manifest) -> dict[str, bytes]:
    """``{key: bytes}`` of the program's external constants (``model.ptd``), if it has any."""
    files = list(manifest.extra.get("data_files") or [])
    if not files:
        return {}
    from executorch.exir._serialize._cord import Cord
    from executorch.extension.flat_tensor.serialize.serialize import FlatTensorSerializer

    payload = FlatTensorSerializer().deserialize(Cord((directory / files[0]).read_bytes()))
    return {key: bytes(payload.buffers[entry.buffer_index]) for key, entry in payload.named_data.items()}


def sefp_calls(directory: str | Path) -> list[SEFPCall]:
    """Every ``otaro::sefp_*`` call of the fused program, in execution order, with the tensors it reads."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    directory = Path(directory)
    manifest = Manifest.load(directory)
    pte = deserialize_pte_binary((directory / manifest.artifact).read_bytes())
    program = pte.program
    external = _external_data(directory, manifest)
    plan = program.execution_plan[0]
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]

    def tensor(index: int) -> tuple[torch.Tensor, object]:
        t = plan.values[index].val
        dtype = _DTYPES.get(int(t.scalar_type))
        info = getattr(t, "extra_tensor_info", None)
        key = getattr(info, "fully_qualified_name", None) if info is not None else None
        if key and key in external:
            raw, where = external[key], key
        elif t.data_buffer_idx > 0:
            raw, where = program.constant_buffer[t.data_buffer_idx].storage, t.data_buffer_idx
        else:
            raise ArtifactError(f"{manifest.artifact}: an SEFP plane is not a constant of the program")
        count = int(np.prod(t.sizes)) if len(t.sizes) else 1
        array = np.frombuffer(raw, dtype=dtype, count=count).reshape(list(t.sizes))
        return torch.from_numpy(array.copy()), where

    calls = []
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ != "KernelCall" or names[args.op_index] not in _SEFP_OPS:
                continue
            kind = _SEFP_OPS[names[args.op_index]]
            read = {name: tensor(args.args[1 + i]) for i, name in enumerate(_ARG_NAMES)}
            levels_arg = args.args[8]
            if type(plan.values[levels_arg].val).__name__ == "Tensor":
                read["levels"] = tensor(levels_arg)
            calls.append(SEFPCall(kind, {k: v[0] for k, v in read.items()}, tuple(read[k][1] for k in _ARG_NAMES)))
    return calls


def stored_layers(directory: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    """``{layer: {"p0".."p3", "exponents"[, "levels"]: tensor}}`` for every SEFP linear of a fused ``.pte``."""
    manifest = Manifest.load(directory)
    linears = [c for c in sefp_calls(directory) if c.kind == "linear"]
    if manifest.kernels != "fused" or not linears:
        raise ArtifactError(f"{directory}: not a fused .pte (its SEFP layers were decomposed into Core ATen ops)")
    if len(linears) != len(manifest.quantized_layers):
        raise ArtifactError(
            f"{directory}: {len(linears)} SEFP linear calls for {len(manifest.quantized_layers)} quantized layers"
        )
    return {layer: call.tensors for layer, call in zip(manifest.quantized_layers, linears)}


def encoded_layers(hf_model, tokenizer, manifest: Manifest) -> dict[str, dict[str, torch.Tensor]]:
    """The same dict re-encoded from ``hf_model`` with the recipe the manifest records."""
    from otaro_export.export.sefp_recipe import SEFPRecipe, layer_specs

    recipe = SEFPRecipe(**manifest.extra["sefp_recipe"])
    decoder = ExportDecoder(hf_model, int(manifest.model["max_seq_len"]))
    specs = layer_specs(hf_model, tokenizer, list(manifest.quantized_layers), recipe, log=lambda _m: None)
    layers = {}
    for name, spec in specs.items():
        weight = decoder.get_submodule(name).weight.detach().to(torch.float32)
        encoded, levels = spec.encode(weight, f"{name}.weight")
        packed = pack(encoded)
        layers[name] = {key: getattr(packed, key) for key in _ARG_NAMES}
        if levels is not None:
            layers[name]["levels"] = levels
    return layers


def reference_decoder(directory: str | Path, hf_model, bits: int, tokenizer=None) -> ExportDecoder:
    """An ExportDecoder of ``hf_model`` whose SEFP layers hold the artifact's weights at E5M``bits``."""
    bits = check_bits(bits)
    manifest = Manifest.load(directory)
    floors = manifest.extra.get("precision_floors", {})
    int8_max_bits = int(manifest.extra.get("sefp_recipe", {}).get("int8_activations", 0))
    if manifest.kernels == "fused":
        layers = stored_layers(directory)
    else:
        layers = encoded_layers(hf_model, tokenizer, manifest)
    decoder = ExportDecoder(hf_model, int(manifest.model["max_seq_len"]))
    with torch.no_grad():
        for layer, t in layers.items():
            linear = decoder.get_submodule(layer)
            weight = unpack(t["p0"], t["p1"], t["p2"], t["p3"], t["exponents"], linear.in_features)
            effective = max(bits, floors.get(layer, bits))
            linear.weight.copy_(weight.dequantize(effective, t.get("levels")))
            if int8_max_bits and activation_quant.applies(effective, int8_max_bits):
                linear.register_forward_pre_hook(_quantize_input)
    return decoder  # a tied lm_head shares its Parameter with the embedding: both now read the SEFP weight


def _quantize_input(_module, args):
    return (activation_quant.fake_quantize(args[0]), *args[1:])
