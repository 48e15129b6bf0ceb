"""ONNX writer: ONE ``model.onnx`` (+ ``model.onnx.data``) that decodes at any precision E5M3..E5M8.

Flow: wrap the HF model in :class:`KVCacheDecoder` (explicit past/present K/V
tensors, a ``bits`` input) -> ``torch.export`` -> ``otaro_export.passes.lower_to_sefp``
(SEFP constants, ``otaro.sefp_linear`` nodes reading ``bits``, float weights
dropped) -> ``torch.onnx.export`` with ``otaro.sefp_linear`` translated to an
``ai.otaro::SEFPLinear`` node -> the model-local function body attached ->
checked with ``onnx.checker`` and written with all tensors in one external
data file beside the graph (so it loads from any working directory and
models over 2 GB work).

``export_onnx_fp32`` writes the same decoder without lowering (float32
weights, no custom nodes): the baseline for benchmarks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import onnx
import torch

from otaro_export import ops
from otaro_export.convert import check_supported, select_sefp_linears
from otaro_export.errors import ArtifactError
from otaro_export.export.kv_decoder import KVCacheDecoder, io_names
from otaro_export.export.model_info import model_info
from otaro_export.export.onnx_sefp_function import DOMAIN, OP_TYPE, attach_function, register_schema
from otaro_export.manifest import Manifest

ARTIFACT_NAME = "model.onnx"
#: ONNX opset of the graph and of the SEFPLinear function body (BitwiseAnd needs >= 18)
OPSET = 18


def _translate_sefp_linear(x, p0, p1, p2, p3, exponents, bits, bias=None):
    """torch.onnx translation of ``otaro.sefp_linear`` into one ``ai.otaro::SEFPLinear`` node."""
    import onnxscript

    otaro = onnxscript.values.Opset(DOMAIN, 1)
    if bias is None:
        return otaro.SEFPLinear(x, p0, p1, p2, p3, exponents, bits)
    return otaro.SEFPLinear(x, p0, p1, p2, p3, exponents, bits, bias)


def _to_onnx(ep: torch.export.ExportedProgram, path: Path, input_names, output_names) -> None:
    """torch.onnx.export ``ep`` to ``path`` (+ ``path.data``), then attach the SEFPLinear function.

    ``optimize=False``: onnxscript's rewriter took minutes on a 30-layer graph
    (pattern matching over every node) and onnxruntime applies its own graph
    optimizations at load anyway.
    """
    register_schema()
    program = torch.onnx.export(
        ep,
        (),
        input_names=input_names,
        output_names=output_names,
        opset_version=OPSET,
        custom_translation_table={ops.sefp_linear: _translate_sefp_linear},
        dynamo=True,
        optimize=False,
        verbose=False,
    )
    program.save(str(path), external_data=True)
    # Attach the function body to the graph proto only; the tensors stay in the data file.
    model = onnx.load(str(path), load_external_data=False)
    for node in model.graph.node:
        # per-node torch debug metadata (fx node, module path, stack) was ~90% of the graph file
        del node.metadata_props[:]
        node.doc_string = ""
    if any(n.domain == DOMAIN and n.op_type == OP_TYPE for n in model.graph.node):
        attach_function(model)
    onnx.save(model, str(path))


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
    from otaro_export.passes import lower_to_sefp
    from otaro_export.passes.drop_unused_inputs import drop_unused_inputs

    model = loaded.model
    check_supported(model)
    model.eval()
    if next(model.parameters()).dtype != torch.float32:
        model.to(torch.float32)  # SEFP quantizes float32 weights; the op takes float32 activations
    layers = select_sefp_linears(model, options.quantize_lm_head) if lower else []
    decoder = KVCacheDecoder(model)
    input_names, output_names = io_names(decoder.num_layers)

    t0 = time.perf_counter()
    ep = decoder.export(options.max_seq_len)
    log(f"torch.export: {time.perf_counter() - t0:.1f}s")
    if lower:
        ep, report = lower_to_sefp(ep, layers, bits_input="bits")
        log(report.summary())
    ep, _ = drop_unused_inputs(ep)  # e.g. the second name of a tied embedding

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / ARTIFACT_NAME
    for stale in [path, out_dir / f"{ARTIFACT_NAME}.data"]:
        stale.unlink(missing_ok=True)
    t1 = time.perf_counter()
    _to_onnx(ep, path, input_names, output_names)
    try:
        onnx.checker.check_model(str(path), full_check=False)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported {path} fails onnx.checker: {exc}") from exc
    written = onnx.load(str(path), load_external_data=False)
    graph_inputs = [i.name for i in written.graph.input]
    graph_outputs = [o.name for o in written.graph.output]
    sizes = {p.name: p.stat().st_size for p in [path, *data_files(path)]}
    log(
        f"torch.onnx.export + checks: {time.perf_counter() - t1:.1f}s; wrote "
        + ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in sizes.items())
    )

    kernels, kernel_library = kernel_fields(options.kernels, lowered=lower)
    return Manifest(
        target="onnx",
        artifact=ARTIFACT_NAME,
        kernels=kernels,
        kernel_library=kernel_library,
        quantized_layers=layers,
        inputs=graph_inputs,
        outputs=graph_outputs,
        model=model_info(model, loaded.source, options.max_seq_len),
        extra={
            "weights": "sefp" if lower else "fp32",
            "opset": OPSET,
            "custom_op": f"{DOMAIN}::{OP_TYPE}" if lower else None,
            "files": sizes,
            "kv_cache": "explicit past_key_i/past_value_i inputs [1, kv_heads, P, head_dim]; "
            "present_* outputs hold P + S positions",
        },
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
