"""``--target executorch``: ONE ``model.pte`` that runs at every precision E5M3..E5M8.

Steps (the artifact: docs/FORMAT.md §8):

1. :class:`~otaro_export.export.executorch_decoder.ExecuTorchDecoder` (the ONNX
   exporter's :class:`~otaro_export.export.llm_decoder.ExportDecoder` with the
   KV caches as mutable buffers and, by ``--attention``, ExecuTorch's LLM
   custom ops for attention or standard ops only) -> ``torch.export``;
2. the shared lowering ``lower_to_sefp`` with the recipe's per-layer specs
   (same as ONNX): the packed linears become ``otaro::sefp_linear`` nodes, the
   tied embedding an ``otaro::sefp_embedding`` gather on ``lm_head``'s planes
   (the matrix is stored once), floored layers read ``clamp_min(bits, floor)``;
   every linear gets the recipe's int8-activation setting ``act_int8_max_bits``
   (docs/FORMAT.md §9, ``passes/set_int8_activations``);
3. ``--kernels portable`` only: the SEFP nodes are rewritten into Core ATen ops
   (``passes/decompose_sefp_*``, then ``passes/merge_duplicate_nodes``), so the
   stock runtime needs no library;
4. ``to_edge_transform_and_lower`` with XNNPACK (fp32 baseline: every op it
   takes; portable: the linears on their dequantized weights only), then
   ``to_executorch``.

Each plane ``p0..p3`` and the exponents are separate constant tensors, so under
mmap a run at E5M3 (fused kernel) pages in only ``p0`` + exponents.
``external_weights=True`` moves the constants to ``model.ptd``.

:func:`export_executorch_fp32` writes the same decoder with float32 weights
(XNNPACK linears, no SEFP): the benchmarks' baseline.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import torch

from otaro_export.convert import check_supported
from otaro_export.errors import OtaroError
from otaro_export.export.executorch_decoder import ExecuTorchDecoder, check_attention
from otaro_export.export.model_info import model_info
from otaro_export.manifest import LLM_CUSTOM_OPS, Manifest

ARTIFACT_NAME = "model.pte"
#: data-file stem for external weights; ExecuTorch appends ".ptd"
EXTERNAL_DATA_STEM = "model"
METHOD_NAME = "forward"
KERNEL_LIBRARY = "executorch"
#: ExecuTorch kernel libraries a session registers before loading the method (manifest extra.runtime_ops)
DEFAULT_ATTENTION = "llm-ops"
#: (attention, fused kernels) -> the op that computes attention in the program
ATTENTION_KERNELS = {
    ("llm-ops", True): "otaro_llm::kv_attention",
    ("llm-ops", False): "llama::custom_sdpa",
    ("portable", True): "standard ops",
    ("portable", False): "standard ops",
}
_KV_CACHE = {
    "llm-ops": "mutable buffers k_cache_i/v_cache_i [1, max_seq_len, kv_heads, head_dim] inside the method; "
    "a call writes positions input_pos[0] .. input_pos[0] + S - 1 (fused programs: otaro_llm::kv_attention, in "
    "place; fp32 programs: llama::update_cache)",
    "portable": "mutable buffers k_cache_i [kv_heads, head_dim, max_seq_len] (keys transposed) and v_cache_i "
    "[kv_heads, max_seq_len, head_dim] inside the method; a call writes positions input_pos[0] .. input_pos[0] + S - 1 "
    "(index_put_, in place)",
}


def _partitioners(kernels: str) -> list:
    """XNNPACK for the float baseline's and the portable program's linears; none for the fused program.

    In the fused program the linears are SEFP kernels and what is left per layer
    is a few small element-wise ops: the portable/optimized kernels run those
    without the delegate's per-call cost, and lowering skips XNNPACK's
    per-partition preprocessing (most of the export time of a delegated model).

    Portable: XNNPACK takes the linears only (``LinearConfig``, ``AddmmConfig``). With
    every config it also took the float element-wise ops of the weights'
    dequantization and of the activations' fake quantization, interleaved with
    the integer unpacking it cannot run, which split each layer into ~18
    partitions; ExecuTorch re-legalizes and recompiles the whole graph once per
    partition, so lowering time grew with partitions x graph size. One partition
    per linear is ~4.5 per layer, each with the same linear XNNPACK ran before.
    """
    if kernels == "fused":
        return []
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS, UpsampleBilinear2dConfig
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    if kernels == "portable":
        from executorch.backends.xnnpack.partition.config.gemm_configs import AddmmConfig, LinearConfig

        class LinearsPartitioner(XnnpackPartitioner):
            """Keeps every ``aten.linear`` undecomposed without a per-node check.

            XNNPACK's own answer comes with a check per node, which sends
            ``to_edge_transform_and_lower`` down a path of two more retraces of
            the whole program; without it the program, already decomposed by
            :func:`_decompose` with the same table, is not retraced again. Every
            float32 linear qualifies here (its weight is not required to be
            static), and one XNNPACK does not take would still run: the stock
            runtime has ``aten::linear.out``.
            """

            def ops_to_not_decompose(self, ep):
                ops, _check = super().ops_to_not_decompose(ep)
                return ops, None

        # the decomposed SEFP weight is computed at run time, and XNNPACK only
        # takes such a linear when told its weight need not be static
        return [LinearsPartitioner(configs=[LinearConfig, AddmmConfig], force_non_static_weights_for_f32_linear=True)]
    # UpsampleBilinear2d's config traces its pattern graphs on every partitioner run; a decoder has none.
    configs = [c for c in ALL_PARTITIONER_CONFIGS if c is not UpsampleBilinear2dConfig]
    return [XnnpackPartitioner(configs=configs)]


def _decompose(ep: torch.export.ExportedProgram, partitioners: list) -> torch.export.ExportedProgram:
    """Portable: the SEFP ops as Core ATen ops, then their shared parts merged.

    One retrace with ExecuTorch's own Core ATen table (less the ops the
    partitioners keep) plus the SEFP decompositions, so that
    ``to_edge_transform_and_lower`` finds nothing left to decompose.
    """
    from otaro_export.passes import decompose_sefp_embedding as embedding
    from otaro_export.passes import decompose_sefp_linear as linear
    from otaro_export.passes.merge_duplicate_nodes import merge_duplicate_nodes

    if linear.count_sefp_nodes(ep) + embedding.count_sefp_embedding_nodes(ep) == 0:
        return ep
    try:
        from executorch.exir.tracer import _default_decomposition_table

        table = _default_decomposition_table()
    except ImportError:  # the same table, less an edge-specific extra
        table = torch.export.default_decompositions()
    for partitioner in partitioners:
        for op in partitioner.ops_to_not_decompose(ep)[0]:
            table.pop(op, None)
    table.update({**linear.decomposition_table(), **embedding.decomposition_table()})
    out = ep.run_decompositions(table)
    left = linear.count_sefp_nodes(out) + embedding.count_sefp_embedding_nodes(out)
    if left:
        raise RuntimeError(f"{left} otaro SEFP node(s) survived the portable decomposition")
    out, _ = merge_duplicate_nodes(out)
    return out


@contextlib.contextmanager
def _no_relegalize_for_single_op_partitions():
    """While lowering, a partition of one op is cut out without re-sorting the whole graph.

    ExecuTorch's ``create_submodule_from_nodes`` rebuilds and recompiles the whole
    FX graph (``legalize_graph``) after cutting out each partition, so delegating
    costs partitions x graph size: the portable SmolLM2 program (121 linear
    partitions in a graph of ~10k nodes) spent most of its export there. For a
    partition of a single op the re-sort is not needed: the call that replaces it
    is inserted right after it, so its inputs are still defined before it and its
    users still come after it. Partitions of several ops keep ExecuTorch's path.
    Nothing is patched if the ExecuTorch version lays its code out differently.
    """
    try:
        from executorch.exir.backend import backend_api
    except ImportError:
        yield
        return
    original = getattr(backend_api, "create_submodule_from_nodes", None)
    partitions = getattr(backend_api, "_create_partitions", None)
    if original is None or partitions is None:
        yield
        return

    def create_submodule(gm, node_list, tag, skip_legalize_graph=False):
        ops = [node for node in node_list if node.op == "call_function"]
        return original(gm, node_list, tag, skip_legalize_graph=skip_legalize_graph or len(ops) == 1)

    def create_partitions(tagged_graph_module, *args, **kwargs):
        result = partitions(tagged_graph_module, *args, **kwargs)
        tagged_graph_module.recompile()  # once, for the partitions cut out without a re-sort
        return result

    backend_api.create_submodule_from_nodes = create_submodule
    backend_api._create_partitions = create_partitions
    try:
        yield
    finally:
        backend_api.create_submodule_from_nodes = original
        backend_api._create_partitions = partitions


def lower_to_executorch(
    ep: torch.export.ExportedProgram, kernels: str, *, external_weights: bool = False, reinplace: bool = False
):
    """Edge (+ XNNPACK) + ExecuTorch lowering of a program; ``kernels``: fused, portable or fp32.

    ``reinplace`` (portable attention): functionalization turned each cache
    update into ``index_put`` + a write-back copy of the whole buffer;
    ExecuTorch's reinplace pass makes it ``index_put_`` on the buffer again.
    """
    from executorch.exir import EdgeCompileConfig, ExecutorchBackendConfig, to_edge, to_edge_transform_and_lower

    if kernels not in ("fused", "portable", "fp32"):
        raise ValueError(f"unknown kernels mode {kernels!r}")
    partitioners = _partitioners(kernels)
    if kernels == "portable":
        ep = _decompose(ep, partitioners)
    # the custom ops (otaro::, otaro_llm::, llama::) are not Core ATen
    compile_config = EdgeCompileConfig(_check_ir_validity=False)
    if partitioners:
        with _no_relegalize_for_single_op_partitions():
            edge = to_edge_transform_and_lower(ep, partitioner=partitioners, compile_config=compile_config)
    else:  # one decomposition pass over the graph instead of to_edge_transform_and_lower's two
        edge = to_edge(ep, compile_config=compile_config)
    config = ExecutorchBackendConfig(
        external_constants=(lambda node: EXTERNAL_DATA_STEM) if external_weights else False,
        run_reinplace_pass=reinplace,
    )
    program = edge.to_executorch(config)
    if kernels == "fused" and not external_weights:
        group_planes_by_precision(program, config)
    return program


_SEFP_KERNELS = ("otaro::sefp_linear.out", "otaro::sefp_embedding.out")


def _kernel_calls(plan):
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ == "KernelCall":
                yield names[args.op_index], args.args


def group_planes_by_precision(program, config) -> bool:
    """Reorder the constant segment: everything E5M3 reads first, then the p1, p2 and p3 planes.

    ExecuTorch lays constants out in first-use order, which interleaves each
    layer's planes. Under mmap the kernel maps pages around each fault (and
    reads ahead), so a run at E5M3 would also make resident pieces of the
    p1..p3 planes next to every p0. Grouped, precision k reads one contiguous
    prefix of the segment (docs/FORMAT.md §4's plane order), and resident
    memory follows the precision. Returns False (layout unchanged) if the
    program does not look as expected.
    """
    from executorch.exir._serialize._serialize import serialize_for_executorch

    try:
        emitted = program._emitter_output
        pte = emitted.program
        buffers = list(pte.constant_buffer)
        group = {}  # constant buffer index -> 1, 2, 3 for p1, p2, p3
        for plan in pte.execution_plan:
            for name, args in _kernel_calls(plan):
                if name in _SEFP_KERNELS:
                    for plane in (1, 2, 3):  # args: x|ids, p0, p1, p2, p3, exponents, ...
                        index = plan.values[args[1 + plane]].val.data_buffer_idx
                        if index > 0:
                            group[index] = plane
        if not group or len(buffers) < 2:
            return False
        order = sorted(range(1, len(buffers)), key=lambda i: (group.get(i, 0), i))
        new_index = {old: new for new, old in enumerate(order, start=1)}
        constants = [
            value.val
            for plan in pte.execution_plan
            for value in plan.values
            if type(value.val).__name__ == "Tensor" and value.val.data_buffer_idx > 0
        ]
        if any(t.data_buffer_idx not in new_index for t in constants):
            return False
    except (AttributeError, IndexError, TypeError):
        return False
    for tensor in constants:  # nothing can fail from here on: the program is never left half-renumbered
        tensor.data_buffer_idx = new_index[tensor.data_buffer_idx]
    pte.constant_buffer = [buffers[0]] + [buffers[i] for i in order]
    program._pte_data, program._tensor_data = serialize_for_executorch(
        emitted, config, program._data_serializer, program._named_data
    )
    program._buffer = None
    return True


def call_counts(program) -> collections.Counter:
    """Instructions of the method by kind: ``{op name: kernel calls, "xnnpack": delegate calls, ...}``.

    One decode step executes each instruction once (the chain has no loops), so
    this is the number of kernel and delegate calls per token.
    """
    plan = program.executorch_program.execution_plan[0]
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
    counts: collections.Counter = collections.Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            kind = type(args).__name__
            if kind == "KernelCall":
                counts[names[args.op_index]] += 1
            elif kind == "DelegateCall":
                counts["xnnpack"] += 1
            else:
                counts[kind] += 1
    return counts


def _summarize_calls(counts: collections.Counter) -> dict:
    kernel = sum(v for k, v in counts.items() if "::" in k)
    return {
        "kernel_calls": kernel,
        "delegate_calls": counts.get("xnnpack", 0),
        "other_instructions": sum(counts.values()) - kernel - counts.get("xnnpack", 0),
        "by_op": dict(counts.most_common()),
    }


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


def _float32(model: torch.nn.Module) -> torch.nn.Module:
    model.eval()
    if next(model.parameters()).dtype != torch.float32:
        model.to(torch.float32)  # SEFP quantizes float32 weights; the ops take float32 activations
    return model


def _write_program(
    loaded,
    out_dir: Path,
    log: Callable[[str], None],
    *,
    kernels: str,
    max_seq_len: int,
    recipe=None,
    external: bool = False,
    attention: str = DEFAULT_ATTENTION,
) -> Manifest:
    """``kernels`` "fused" / "portable" (SEFP layers by ``recipe``) or "fp32" (the float baseline)."""
    from otaro_export.export.sefp_recipe import lower_exported_decoder

    model = _float32(loaded.model)
    check_supported(model)
    lower = kernels != "fp32"
    fused = kernels == "fused"
    # the norm's mean as a linear keeps a norm in one XNNPACK partition: fp32 only, where XNNPACK takes every op
    decoder = ExecuTorchDecoder(
        model, max_seq_len, fused_ops=fused, norm_as_linear=kernels == "fp32", attention=attention
    )
    layers = decoder.sefp_linear_names(include_lm_head=recipe.lm_head == "sefp") if lower else []
    input_names, output_names = decoder.io_names()

    t0 = time.perf_counter()
    ep = decoder.export()
    log(f"torch.export of the decoder (max_seq_len {max_seq_len}): {time.perf_counter() - t0:.1f}s")
    ep, report = lower_exported_decoder(ep, model, loaded.tokenizer, layers, recipe, log)
    if lower:
        from otaro_export.passes.set_int8_activations import set_int8_activations

        ep, _ = set_int8_activations(ep, recipe.int8_activations or 0)
    t1 = time.perf_counter()
    program = lower_to_executorch(ep, kernels, external_weights=external, reinplace=attention == "portable")
    t_lower = time.perf_counter() - t1
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = _write(program, out_dir, external)
    sizes = _sizes(out_dir, files)
    calls = _summarize_calls(call_counts(program))
    log(
        f"ExecuTorch lowering ({kernels}, {attention} attention): {t_lower:.1f}s; {calls['kernel_calls']} kernel + "
        f"{calls['delegate_calls']} delegate calls per step; wrote "
        + ", ".join(f"{n} ({s / 2**20:.1f} MiB)" for n, s in sizes.items())
    )
    extra = {
        "method": METHOD_NAME,
        "data_files": files[1:],
        "backend": "xnnpack",
        # the kernels beyond ExecuTorch's portable ones (and the project's library) that the method calls
        "runtime_ops": [LLM_CUSTOM_OPS] if attention == "llm-ops" and not fused else [],
        "attention": attention,
        # which kernel attends: the project's (fused programs) or ExecuTorch's (fp32 programs), or standard ops
        "attention_kernel": ATTENTION_KERNELS[attention, fused],
        "weights": "sefp" if lower else "fp32",
        "file_sizes": sizes,
        "calls_per_step": {k: v for k, v in calls.items() if k != "by_op"},
        "export_seconds": round(time.perf_counter() - t0, 1),
        "kv_cache": _KV_CACHE[attention],
    }
    if lower:
        extra["sefp_recipe"] = recipe.manifest_fields()
        extra["precision_floors"] = dict(report.floors)
    else:
        extra["baseline"] = "fp32"
    return Manifest(
        target="executorch",
        artifact=ARTIFACT_NAME,
        kernels=kernels if lower else "portable",  # the fp32 baseline needs no project library
        kernel_library=KERNEL_LIBRARY if lower and kernels == "fused" else None,
        quantized_layers=layers,
        inputs=input_names,
        outputs=output_names,
        model=model_info(model, loaded.source, max_seq_len),
        extra=extra,
    )


def export_executorch(loaded, options, out_dir: Path, log: Callable[[str], None] = print) -> Manifest:
    """Write ``out_dir/model.pte`` (one method, every precision); returns its manifest (not yet saved)."""
    return _write_program(
        loaded,
        out_dir,
        log,
        kernels=options.kernels,
        max_seq_len=options.max_seq_len,
        recipe=options.recipe,
        external=bool(getattr(options, "external_weights", False)),
        attention=check_attention(getattr(options, "attention", None) or DEFAULT_ATTENTION),
    )


def export_executorch_fp32(
    loaded,
    out_dir: str | Path,
    max_seq_len: int = 128,
    log: Callable[[str], None] = print,
    attention: str = DEFAULT_ATTENTION,
) -> Manifest:
    """The float32 XNNPACK baseline of the same decoder (no SEFP layers; ``bits`` is accepted and ignored).

    Writes ``model.pte``, the tokenizer and ``manifest.json`` (``extra.baseline =
    "fp32"``); ``otaro_export.runtime.load`` runs it like any artifact.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest = _write_program(
        loaded, out, log, kernels="fp32", max_seq_len=max_seq_len, attention=check_attention(attention)
    )
    if loaded.tokenizer is not None:
        loaded.tokenizer.save_pretrained(str(out / manifest.tokenizer))
    manifest.save(out)
    return manifest
