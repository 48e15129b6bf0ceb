"""``--target executorch``: ONE ``model.pte`` that runs at every precision E5M3..E5M8.

Steps (the artifact: docs/FORMAT.md §8):

1. export the float KV-cache decoder ``forward(input_ids, cache_position, bits)``
   (:mod:`otaro_export.export.executorch_decoder`);
2. the shared lowering ``lower_to_sefp`` (same as ONNX): selected linears become
   ``otaro.sefp_linear`` nodes on packed SEFP constants, all reading ``bits``;
3. ``--kernels portable`` only: ``decompose_sefp_linear`` rewrites those nodes
   into Core ATen ops (stock runtime, no library);
4. ``to_edge_transform_and_lower`` with XNNPACK (it takes the non-SEFP work;
   ``otaro::sefp_linear`` stays outside every delegate), then ``to_executorch``:
   the SEFP node becomes ``otaro::sefp_linear.out``, run by the project's
   ExecuTorch kernel library (``manifest.kernel_library == "executorch"``).

Weights are stored once: each plane ``p0..p3`` and the exponents are separate
constant tensors, so under mmap a run at E5M3 (fused kernel) pages in only
``p0`` + exponents. ``external_weights=True`` moves them to ``model.ptd``.

:func:`export_executorch_fp32` writes the float XNNPACK baseline (no SEFP, no
``bits`` input) that benchmarks compare against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from otaro_export.convert import select_sefp_linears
from otaro_export.errors import OtaroError
from otaro_export.export.executorch_decoder import FP32_INPUT_NAMES, INPUT_NAMES, OUTPUT_NAMES, export_decoder
from otaro_export.export.model_info import model_info
from otaro_export.manifest import Manifest

ARTIFACT_NAME = "model.pte"
#: data-file stem for external weights; ExecuTorch appends ".ptd"
EXTERNAL_DATA_STEM = "model"
METHOD_NAME = "forward"
KERNEL_LIBRARY = "executorch"


def _partitioner(kernels: str):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    # Portable: the decomposed SEFP weight is computed at run time, and XNNPACK
    # only takes such a linear when told its weight need not be static.
    return XnnpackPartitioner(force_non_static_weights_for_f32_linear=kernels == "portable")


def lower_to_executorch(ep: torch.export.ExportedProgram, kernels: str, *, external_weights: bool = False):
    """Edge + XNNPACK + ExecuTorch lowering of an (already SEFP-lowered) program."""
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge_transform_and_lower

    if kernels == "portable":
        from otaro_export.passes.decompose_sefp_linear import decompose_sefp_linear

        ep = decompose_sefp_linear(ep)
    edge = to_edge_transform_and_lower(
        ep,
        partitioner=[_partitioner(kernels)],
        # otaro::sefp_linear is not Core ATen; the portable program is checked in full.
        compile_config=EdgeCompileConfig(_check_ir_validity=kernels == "portable"),
    )
    config = ExecutorchBackendConfig(
        external_constants=(lambda node: EXTERNAL_DATA_STEM) if external_weights else False,
    )
    return edge.to_executorch(config)


def _write(program, out_dir: Path, external_weights: bool) -> list[str]:
    """Write model.pte (and model.ptd); return the file names written."""
    with open(out_dir / ARTIFACT_NAME, "wb") as f:
        program.write_to_file(f)
    written = [ARTIFACT_NAME]
    stale = out_dir / f"{EXTERNAL_DATA_STEM}.ptd"
    if stale.exists():
        stale.unlink()
    if external_weights:
        program.write_tensor_data_to_file(str(out_dir))
        if not stale.exists():
            raise OtaroError(f"ExecuTorch wrote no {stale.name}: the program has no external constants")
        written.append(stale.name)
    return written


def _sizes(out_dir: Path, files: list[str]) -> dict:
    return {name: (out_dir / name).stat().st_size for name in files}


def export_executorch(loaded, options, out_dir: Path, log: Callable[[str], None] = print) -> Manifest:
    """Write ``out_dir/model.pte`` (one method, every precision) and return its manifest."""
    from otaro_export.passes.lowering import lower_to_sefp

    model = loaded.model.eval()
    external = bool(getattr(options, "external_weights", False))
    names = select_sefp_linears(model, options.quantize_lm_head)
    t0 = time.perf_counter()
    ep = export_decoder(model, options.max_seq_len, with_bits=True)
    t_export = time.perf_counter() - t0
    log(f"torch.export of the KV-cache decoder (max_seq_len {options.max_seq_len}) in {t_export:.1f}s")
    ep, report = lower_to_sefp(ep, names, bits_input="bits")
    log(report.summary())
    t1 = time.perf_counter()
    program = lower_to_executorch(ep, options.kernels, external_weights=external)
    t_lower = time.perf_counter() - t1
    files = _write(program, out_dir, external)
    sizes = _sizes(out_dir, files)
    log(
        f"ExecuTorch lowering ({options.kernels} kernels, XNNPACK) in {t_lower:.1f}s; wrote "
        + ", ".join(f"{n} ({s / 2**20:.1f} MiB)" for n, s in sizes.items())
    )
    return Manifest(
        target="executorch",
        artifact=ARTIFACT_NAME,
        kernels=options.kernels,
        kernel_library=KERNEL_LIBRARY if options.kernels == "fused" else None,
        quantized_layers=report.layers,
        inputs=list(INPUT_NAMES),
        outputs=list(OUTPUT_NAMES),
        model=model_info(model, loaded.source, options.max_seq_len),
        extra={
            "method": METHOD_NAME,
            "data_files": files[1:],
            "backend": "xnnpack",
            "file_sizes": sizes,
            "export_seconds": round(time.perf_counter() - t0, 1),
        },
    )


def export_executorch_fp32(
    loaded, out_dir: str | Path, max_seq_len: int = 128, log: Callable[[str], None] = print
) -> Manifest:
    """The float32 XNNPACK baseline of the same decoder (no SEFP layers, no ``bits`` input).

    Writes ``model.pte``, the tokenizer and ``manifest.json`` (``extra.baseline =
    "fp32"``); ``otaro_export.runtime.load`` runs it like any artifact and
    ignores the precision (``--bits``) it is given.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = loaded.model.eval()
    t0 = time.perf_counter()
    ep = export_decoder(model, max_seq_len, with_bits=False)
    program = lower_to_executorch(ep, "fused")
    files = _write(program, out, external_weights=False)
    log(
        f"fp32 ExecuTorch baseline in {time.perf_counter() - t0:.1f}s ({_sizes(out, files)[ARTIFACT_NAME] / 2**20:.1f} MiB)"
    )
    manifest = Manifest(
        target="executorch",
        artifact=ARTIFACT_NAME,
        kernels="portable",  # needs no project library
        kernel_library=None,
        quantized_layers=[],
        inputs=list(FP32_INPUT_NAMES),
        outputs=list(OUTPUT_NAMES),
        model=model_info(model, loaded.source, max_seq_len),
        extra={
            "method": METHOD_NAME,
            "data_files": [],
            "backend": "xnnpack",
            "baseline": "fp32",
            "file_sizes": _sizes(out, files),
            "export_seconds": round(time.perf_counter() - t0, 1),
        },
    )
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(out / manifest.tokenizer))
    manifest.save(out)
    return manifest
