"""ONNX writer: ONE ``model.onnx`` (+ ``model.onnx.data``) that decodes at any precision E5M3..E5M8.

Flow: :class:`~otaro_export.export.llm_decoder.ExportDecoder` (packed
projections, fused norms, one attention op per layer, tied embedding and
lm_head) -> ``torch.export`` -> ``otaro_export.passes.lower_to_sefp`` (SEFP
constants, one ``bits`` input, precision floors, the tied matrix stored once)
-> ``torch.onnx.export`` translating ``otaro.sefp_linear`` / ``sefp_embedding``
to ``ai.otaro`` nodes and the attention/norm ops to onnxruntime's contrib ops
(``GroupQueryAttention`` with a KV cache that a session shares between past
and present, ``SkipSimplifiedLayerNormalization``) -> the ``ai.otaro``
function bodies attached (stock onnxruntime runs them without the library) ->
``onnx.checker`` -> all tensors in one external data file.

The graph has 7 nodes per decoder layer (4 SEFPLinear, the MLP's SwiGLU folded into the
gate/up one by :mod:`~otaro_export.export.onnx_fuse_swiglu`; 2 SkipSimplifiedLayerNormalization;
1 GroupQueryAttention). ``export_onnx_fp32`` writes the same
graph with float32 weights: the benchmarks' baseline.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from otaro_export import ops
from otaro_export.convert import check_supported
from otaro_export.errors import ArtifactError
from otaro_export.export import contrib_ops
from otaro_export.export.llm_decoder import ExportDecoder
from otaro_export.export.model_info import model_info
from otaro_export.export.onnx_fuse_swiglu import fuse_swiglu
from otaro_export.export.onnx_sefp_function import DOMAIN, attach_function, register_schema, set_int8_activations
from otaro_export.manifest import Manifest

ARTIFACT_NAME = "model.onnx"
#: ONNX opset of the graph and of the SEFPLinear function body (BitwiseAnd needs >= 18)
OPSET = 18


def _translate_sefp_linear(x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits: int = 0):
    """torch.onnx translation of ``otaro.sefp_linear`` into one ``ai.otaro::SEFPLinear`` node.

    ``act_int8_max_bits`` (set on a program's nodes by ``passes/set_int8_activations``) becomes the node
    attribute of that name; the exporter then sets every node's attribute from the recipe anyway.
    """
    import onnxscript

    otaro = onnxscript.values.Opset(DOMAIN, 1)
    inputs = [x, p0, p1, p2, p3, exponents, bits]
    if levels is not None:
        inputs += [bias, levels]  # an absent bias stays an empty input name
    elif bias is not None:
        inputs.append(bias)
    if act_int8_max_bits:
        return otaro.SEFPLinear(*inputs, act_int8_max_bits=act_int8_max_bits)
    return otaro.SEFPLinear(*inputs)


def _translate_sefp_embedding(ids, p0, p1, p2, p3, exponents, bits, in_features: int, levels=None):
    """torch.onnx translation of ``otaro.sefp_embedding`` into one ``ai.otaro::SEFPEmbedding`` node."""
    import onnxscript

    otaro = onnxscript.values.Opset(DOMAIN, 1)
    inputs = [ids, p0, p1, p2, p3, exponents, bits] + ([levels] if levels is not None else [])
    return otaro.SEFPEmbedding(*inputs, in_features=in_features)


def _to_onnx(ep: torch.export.ExportedProgram, path: Path, input_names, output_names, int8_activations: int = 0) -> int:
    """torch.onnx.export ``ep`` to ``path`` (+ ``path.data``), then attach the ``ai.otaro`` functions.

    ``int8_activations``: the ``act_int8_max_bits`` of every SEFPLinear node (docs/FORMAT.md §9).
    Returns the number of MLP SwiGLUs folded into their SEFPLinear (``swiglu=1``).

    ``optimize=False``: the graph is already what onnxruntime should run (fused
    ops chosen by the decoder module), and onnxruntime applies its own graph
    optimizations at load.
    """
    register_schema()
    table = {ops.sefp_linear: _translate_sefp_linear, ops.sefp_embedding: _translate_sefp_embedding}
    program = torch.onnx.export(
        ep,
        (),
        input_names=input_names,
        output_names=output_names,
        opset_version=OPSET,
        custom_translation_table={**table, **contrib_ops.translation_table()},
        dynamo=True,
        optimize=False,
        verbose=False,
    )
    program.save(str(path), external_data=True)
    # Attach the function bodies to the graph proto only; the tensors stay in the data file.
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        # per-node torch debug metadata (fx node, module path, stack) was ~90% of the graph file
        del node.metadata_props[:]
        node.doc_string = ""
    fused = 0
    if any(n.domain == DOMAIN for n in model.graph.node):
        set_int8_activations(model, int8_activations)
        fused = fuse_swiglu(model)
        attach_function(model)
    onnx.save(model, str(path))
    return fused


def data_files(path: Path) -> list[Path]:
    """External data files an .onnx file references (relative to its directory)."""
    model = onnx.load(str(path), load_external_data=False)
    names = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                names.add(entry.value)
    return [path.parent / n for n in sorted(names)]


def kernel_fields(kernels: str, lowered: bool = True) -> tuple[str, str | None]:
    """Manifest ``(kernels, kernel_library)``.

    The .onnx file is the same in both modes (custom node + function body);
    the mode only says whether a session must load the custom-op library:
    ``fused`` -> ``"onnxruntime"`` (required), ``portable`` -> ``None`` (stock
    onnxruntime runs the function body). An fp32 export has no SEFP node.
    """
    if kernels not in ("fused", "portable"):
        raise ValueError(f"unknown kernels mode {kernels!r}; choose fused or portable")
    if not lowered or kernels == "portable":
        return "portable", None
    return "fused", "onnxruntime"


def _write(loaded, options, out_dir: Path, log: Callable[[str], None], lower: bool) -> Manifest:
    from otaro_export.export.sefp_recipe import lower_exported_decoder

    model = loaded.model
    check_supported(model)
    model.eval()
    if next(model.parameters()).dtype != torch.float32:
        model.to(torch.float32)  # SEFP quantizes float32 weights; the op takes float32 activations
    recipe = options.recipe
    decoder = ExportDecoder(model, options.max_seq_len)
    layers = decoder.sefp_linear_names(include_lm_head=recipe.lm_head == "sefp") if lower else []
    input_names, output_names = decoder.io_names()

    t0 = time.perf_counter()
    ep = decoder.export()
    log(f"torch.export: {time.perf_counter() - t0:.1f}s")
    ep, report = lower_exported_decoder(ep, model, loaded.tokenizer, layers, recipe, log)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ARTIFACT_NAME
    for stale in [path, out_dir / f"{ARTIFACT_NAME}.data"]:
        stale.unlink(missing_ok=True)
    t1 = time.perf_counter()
    fused_swiglu = _to_onnx(ep, path, input_names, output_names, recipe.int8_activations if lower else 0)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported {path} fails onnx.checker: {exc}") from exc
    written = onnx.load(str(path), load_external_data=False)
    graph_inputs = [i.name for i in written.graph.input]
    graph_outputs = [o.name for o in written.graph.output]
    sizes = {p.name: p.stat().st_size for p in [path, *data_files(path)]}
    log(
        f"torch.onnx.export + checks: {time.perf_counter() - t1:.1f}s; {len(written.graph.node)} nodes; wrote "
        + ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in sizes.items())
    )

    kernels, kernel_library = kernel_fields(options.kernels, lowered=lower)
    extra = {
        "weights": "sefp" if lower else "fp32",
        "opset": OPSET,
        "custom_ops": sorted({f"{n.domain}::{n.op_type}" for n in written.graph.node if n.domain}),
        "graph_nodes": len(written.graph.node),
        "files": sizes,
        "kv_cache": "past_key_i/past_value_i [1, kv_heads, max_seq_len, head_dim], one buffer per tensor "
        "bound as both past and present: a step writes positions total_sequence_length - S .. - 1",
    }
    if lower:
        extra["fused_swiglu"] = fused_swiglu  # SEFPLinear nodes with swiglu=1 (the MLPs' gate/up)
        extra["sefp_recipe"] = recipe.manifest_fields()
        extra["precision_floors"] = dict(report.floors)
    return Manifest(
        target="onnx",
        artifact=ARTIFACT_NAME,
        kernels=kernels,
        kernel_library=kernel_library,
        quantized_layers=layers,
        inputs=graph_inputs,
        outputs=graph_outputs,
        model=model_info(model, loaded.source, options.max_seq_len),
        extra=extra,
    )


def export_onnx(loaded, options, out_dir: Path, log: Callable[[str], None] = print) -> Manifest:
    """Write the SEFP ONNX model for ``loaded`` into ``out_dir``; returns its manifest (not yet saved)."""
    return _write(loaded, options, out_dir, log, lower=True)


def export_onnx_fp32(loaded, options, out_dir: Path, log: Callable[[str], None] = print) -> Manifest:
    """The same KV-cache decoder with float32 weights and no SEFP nodes (benchmark baseline).

    The graph keeps the (ignored) ``bits`` input, so sessions drive both
    artifacts alike. Its manifest says ``kernels: portable`` and
    ``extra["weights"] == "fp32"``. Like ``export_onnx`` it returns the
    manifest unsaved: save it (and the tokenizer) beside the model.
    """
    return _write(loaded, options, out_dir, log, lower=False)
