"""Fused SEFP kernels: achieved GB/s per precision, cold and warm, for the SmolLM2 shapes.

Usage: python benchmarks/bench_kernels.py [--threads 1 2] [--runs 200] [--rows 1] [--shapes NxK ...]
       [--bits 3 4 5 6 7 8] [--isa avx2] [--no-ort] [--baselines] [--warm] [--int8-activations 4]

For each weight shape [N, K] (out x in), activation rows M (1 = a decode step) and
precision E5Mk, the time of one ``y = x @ W_k^T`` and the bandwidth it achieves:
weight bytes the kernel reads at k (planes k needs + exponents, packing.bytes_per_weight_read)
divided by that time.

* ``cold``: as many copies of the weight as fill 3x the last-level cache are called
  one after another (each call streams its weight from DRAM, as a decode step does
  layer after layer in a model larger than the cache);
* ``warm`` (``--warm``): one weight called again and again (it stays in L2/L3; the
  kernel's decode speed, not memory, limits it).

Paths: ``core`` = the kernel core through its C ABI, timed per call in C++ (its own
thread pool); ``ort`` = ``ai.otaro::SEFPLinear`` in onnxruntime with the project's
custom-op library (one model holding the copies as separate nodes; each node's
kernel time from onnxruntime's profiler, so the op's own overhead (input checks,
planning, dispatch to the intra-op threads) is included). Both run int8 activations
(docs/FORMAT.md §9) at precisions <= ``--int8-activations``: by default the ONNX
export's default, so the table times the path an exported model runs (0: float). The ISA is the core's
(``--isa`` sets ``$OTARO_ISA`` so that onnxruntime's kernel uses it too). ``read``
is the plain sequential-read roofline of this machine (one thread, same buffer size).
``--baselines`` adds onnxruntime fp32 MatMul and MatMulNBits 4/8-bit (block 64,
accuracy_level 4) as cold streams of copies of their own formats.

Every figure is a median over ``--runs`` calls, with the 10th percentile of the time
(``p10``) beside it: on a machine shared with other jobs the median moves with the
load, the fast calls much less, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
from pathlib import Path

import numpy as np
import torch

from otaro_export import packing, sefp
from otaro_export.export.sefp_recipe import DEFAULT_INT8_ACTIVATIONS

#: SmolLM2-135M: q/o (576x576), k/v (192x576), packed q/k/v (960x576), packed gate/up (3072x576),
#: down (576x1536), tied embedding / lm_head (49152x576)
SMOLLM2_SHAPES = [(576, 576), (192, 576), (960, 576), (3072, 576), (576, 1536), (49152, 576)]
BITS = (3, 4, 5, 6, 7, 8)
_FALLBACK_LLC = 32 * 2**20


def last_level_cache_bytes() -> int:
    """Size of the largest CPU cache (Linux sysfs), or 32 MiB when unknown."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1], 1)
        sizes.append(int(text.rstrip("KMG")) * unit)
    return max(sizes, default=_FALLBACK_LLC)


def copies_for(nbytes: int, cold: bool, llc: int) -> int:
    return max(1, -(-3 * llc // nbytes)) if cold else 1


def summarize(seconds, nbytes: float) -> dict:
    values = sorted(float(s) for s in seconds)
    median, p10 = statistics.median(values), values[len(values) // 10]
    return {"us": median * 1e6, "p10_us": p10 * 1e6, "gbs": nbytes / median / 1e9, "p10_gbs": nbytes / p10 / 1e9}


def weight_bytes_read(packed: packing.PackedSEFP, bits: int) -> float:
    return packed.out_features * packed.num_groups * sefp.GROUP_SIZE * packing.bytes_per_weight_read(bits)


def clone_packed(p: packing.PackedSEFP) -> packing.PackedSEFP:
    return packing.PackedSEFP(*(t.clone() for t in (*p.planes(), p.exponents)), p.in_features)


# ---- onnxruntime models holding `copies` independent nodes ----


def _distinct(value: np.ndarray, c: int) -> np.ndarray:
    """Copy ``c`` of an initializer, one element changed: onnxruntime shares identical initializers,
    which would turn a cold stream of copies into one cache-resident weight."""
    out = np.array(value, copy=True)
    if out.size:
        flat = out.reshape(-1)
        flat[0] = flat[0] + (c % 3 if np.issubdtype(out.dtype, np.integer) else c * 1e-3)
    return out


def _replicated_model(make_node, inits: dict, copies: int, k: int, n: int, rows: int, extra_inputs=()):
    """``copies`` nodes, each with its own copy of ``inits``, all reading X; outputs Y0..Y{copies-1}."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, tensors, outputs = [], [], []
    for c in range(copies):
        names = {name: f"{name}_{c}" for name in inits}
        tensors += [numpy_helper.from_array(_distinct(value, c), names[name]) for name, value in inits.items()]
        nodes.append(make_node(names, f"Y{c}"))
        outputs.append(helper.make_tensor_value_info(f"Y{c}", TensorProto.FLOAT, [rows, n]))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, k]), *extra_inputs]
    graph = helper.make_graph(nodes, "stream", inputs, outputs, initializer=tensors)
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("ai.otaro", 1), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=10)
    return model.SerializeToString()


def sefp_stream_model(packed: packing.PackedSEFP, copies: int, rows: int, act_int8_max_bits: int = 0) -> bytes:
    from onnx import TensorProto, helper

    inits = dict(zip(["P0", "P1", "P2", "P3", "E"], (t.numpy() for t in (*packed.planes(), packed.exponents))))

    def node(names, out):
        return helper.make_node(
            "SEFPLinear",
            ["X", *(names[p] for p in inits), "bits"],
            [out],
            domain="ai.otaro",
            act_int8_max_bits=act_int8_max_bits,
        )

    bits = helper.make_tensor_value_info("bits", TensorProto.INT64, [])
    return _replicated_model(node, inits, copies, packed.in_features, packed.out_features, rows, [bits])


def matmul_stream_model(w: torch.Tensor, copies: int, rows: int) -> bytes:
    from onnx import helper

    def node(names, out):
        return helper.make_node("MatMul", ["X", names["WT"]], [out])

    n, k = w.shape
    return _replicated_model(node, {"WT": np.ascontiguousarray(w.T.numpy())}, copies, k, n, rows)


def nbits_stream_model(w: torch.Tensor, bits: int, copies: int, rows: int) -> tuple[bytes, int]:
    """MatMulNBits copies (quantized once, initializers duplicated); returns (model, bytes per copy)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    n, k = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "WT"], ["Y"])],
        "one",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [rows, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [rows, n])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(w.T.numpy()), "WT")],
    )
    base = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    quant = MatMulNBitsQuantizer(base, bits=bits, block_size=64, is_symmetric=True, accuracy_level=4)
    quant.process()
    (qnode,) = [nd for nd in quant.model.model.graph.node if nd.op_type == "MatMulNBits"]
    inits = {t.name: numpy_helper.to_array(t) for t in quant.model.model.graph.initializer}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in qnode.attribute}

    def node(names, out):
        ins = [names.get(i, i) for i in qnode.input]
        return helper.make_node("MatMulNBits", ins, [out], domain="com.microsoft", **attrs)

    return _replicated_model(node, inits, copies, k, n, rows), sum(v.nbytes for v in inits.values())


class OrtStream:
    """One session over the replicated model, inputs and outputs bound once (IOBinding).

    Per-node times come from onnxruntime's profiler (each node's kernel time), so
    that a run of thousands of nodes that the scheduler preempts on a busy machine
    does not smear into every node's figure.
    """

    def __init__(self, model: bytes, so, x: np.ndarray, copies: int, rows: int, n: int, op_type: str):
        import tempfile

        import onnxruntime as ort

        self.profile_dir = tempfile.TemporaryDirectory(prefix="bench_kernels_")
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(self.profile_dir.name) / "profile")
        self.sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
        self.binding = self.sess.io_binding()
        self.binding.bind_cpu_input("X", x)
        self.outs = [np.empty((rows, n), np.float32) for _ in range(copies)]
        for c, out in enumerate(self.outs):
            self.binding.bind_output(f"Y{c}", "cpu", 0, np.float32, [rows, n], out.ctypes.data)
        self.copies = copies
        self.op_type = op_type
        self.profiled: dict = {}

    def set_bits(self, bits: int) -> None:
        self.bits = np.array(bits, dtype=np.int64)
        self.binding.bind_cpu_input("bits", self.bits)

    def run(self, key, runs: int) -> None:
        """Runs enough times for ``runs`` node calls; their kernel times are filed under ``key``."""
        self.sess.run_with_iobinding(self.binding)  # warm-up (also profiled, dropped below)
        count = max(2, -(-runs // self.copies))
        for _ in range(count):
            self.sess.run_with_iobinding(self.binding)
        self.profiled[key] = count

    def per_node_seconds(self) -> dict:
        """key -> kernel seconds of every node call of that key's runs (ends profiling)."""
        import json

        events = json.loads(Path(self.sess.end_profiling()).read_text())
        calls = sorted(
            (e["ts"], e["dur"] * 1e-6)
            for e in events
            if e.get("cat") == "Node"
            and e.get("name", "").endswith("_kernel_time")
            and e.get("args", {}).get("op_name") == self.op_type
        )
        out, at = {}, 0
        for key, count in self.profiled.items():  # runs happened in this order: warm-up, then `count` runs
            at += self.copies
            out[key] = [dur for _, dur in calls[at : at + count * self.copies]]
            at += count * self.copies
        return out


def session_options(threads: int, library: bool):
    import onnxruntime as ort

    if library:
        from otaro_export.runtime_ops import ort_library

        so = ort_library.session_options(threads)
    else:
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def bench_shape(n: int, k: int, args, core, llc: int, results: list) -> None:
    gen = torch.Generator().manual_seed(n * 7 + k)
    w = torch.randn(n, k, generator=gen) * 0.02
    x = torch.randn(args.rows, k, generator=gen)
    packed = packing.pack(sefp.quantize(w))
    copies = copies_for(packed.nbytes(), not args.warm, llc)
    weights = [packed] + [clone_packed(packed) for _ in range(copies - 1)]
    repeats = max(1, -(-args.runs // copies))
    read_buffer = torch.ones(max(copies * packed.nbytes(), 2**16), dtype=torch.uint8)
    for threads in args.threads:
        chunk = min(2**18, read_buffer.numel())
        read = summarize(core.time_read(read_buffer, chunk), chunk)
        row = {"shape": f"{n}x{k}", "threads": threads, "copies": copies, "read": read}
        for bits in args.bits:
            seconds = core.time_linear_stream(
                x, weights, bits, repeats=repeats, num_threads=threads, isa=args.isa, act_int8_max_bits=args.int8
            )
            row[f"core M{bits}"] = summarize(seconds, weight_bytes_read(packed, bits))
        if not args.no_ort:
            so = session_options(threads, library=True)
            model = sefp_stream_model(packed, copies, args.rows, args.int8)
            stream = OrtStream(model, so, x.numpy(), copies, args.rows, n, "SEFPLinear")
            for bits in args.bits:
                stream.set_bits(bits)
                stream.run(bits, args.runs)
            for bits, seconds in stream.per_node_seconds().items():
                row[f"ort M{bits}"] = summarize(seconds, weight_bytes_read(packed, bits))
        if args.baselines:
            so = session_options(threads, library=False)
            fp32_copies = copies_for(n * k * 4, not args.warm, llc)
            model = matmul_stream_model(w, fp32_copies, args.rows)
            stream = OrtStream(model, so, x.numpy(), fp32_copies, args.rows, n, "MatMul")
            stream.run("fp32", args.runs)
            row["fp32"] = summarize(stream.per_node_seconds()["fp32"], n * k * 4)
            for b in (4, 8):
                _, per_copy = nbits_stream_model(w, b, 1, args.rows)
                c = copies_for(per_copy, not args.warm, llc)
                model, _ = nbits_stream_model(w, b, c, args.rows)
                stream = OrtStream(model, session_options(threads, library=False), x.numpy(), c, args.rows, n,
                                   "MatMulNBits")  # fmt: skip
                stream.run(b, args.runs)
                row[f"nbits{b}"] = summarize(stream.per_node_seconds()[b], per_copy)
        results.append(row)
        cells = "  ".join(
            f"{key}={v['gbs']:.1f}GB/s" for key, v in row.items() if isinstance(v, dict) and key != "read"
        )
        print(f"  {n}x{k} threads={threads} copies={copies} read={read['gbs']:.1f}GB/s  {cells}", flush=True)


def print_tables(results: list, args, isa: str) -> None:
    cache = "warm (one weight, cache-resident)" if args.warm else "cold (weights streamed from DRAM)"
    for threads in args.threads:
        rows = [r for r in results if r["threads"] == threads]
        if not rows:
            continue
        cols = [key for key in rows[0] if isinstance(rows[0][key], dict)]
        print(f"\n#### M={args.rows}, {threads} thread(s), {cache}, ISA {isa}: GB/s of weight bytes read, median (p10)")
        print("| N x K | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for r in rows:
            print(f"| {r['shape']} | " + " | ".join(f"{r[c]['gbs']:.1f} ({r[c]['p10_gbs']:.1f})" for c in cols) + " |")
        print(f"\nmedian latency in us, M={args.rows}, {threads} thread(s):")
        print("| N x K | " + " | ".join(c for c in cols if c != "read") + " |")
        print("|---" * len(cols) + "|")
        for r in rows:
            print(f"| {r['shape']} | " + " | ".join(f"{r[c]['us']:.1f}" for c in cols if c != "read") + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=200, help="calls timed per cell (>= 20)")
    parser.add_argument("--rows", type=int, default=1, help="activation rows M (1 = decode)")
    parser.add_argument("--shapes", nargs="+", default=None, help="NxK (out x in); default: the SmolLM2 shapes")
    parser.add_argument("--bits", type=int, nargs="+", default=list(BITS))
    parser.add_argument("--isa", default="auto", choices=["auto", "scalar", "avx2", "avx512", "neon"])
    parser.add_argument("--warm", action="store_true", help="one cache-resident weight instead of a cold stream")
    parser.add_argument("--no-ort", action="store_true", help="leave out the onnxruntime custom-op path")
    parser.add_argument("--baselines", action="store_true", help="add ORT fp32 MatMul and MatMulNBits 4/8")
    parser.add_argument(
        "--int8-activations",
        dest="int8",
        type=int,
        default=DEFAULT_INT8_ACTIVATIONS["onnx"],
        help="int8 activations at precisions <= this (default: the ONNX export's; 0: float activations)",
    )
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20 (medians of fewer calls are too noisy on a shared machine)")
    if any(b not in BITS for b in args.bits):
        parser.error(f"--bits must be among {list(BITS)}")
    if args.int8 != 0 and args.int8 not in BITS:
        parser.error(f"--int8-activations must be 0 or among {list(BITS)}")
    if args.isa != "auto":
        os.environ["OTARO_ISA"] = args.isa  # read once by the kernel libraries, before they are loaded
    torch.set_num_threads(max(args.threads))
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SMOLLM2_SHAPES

    from otaro_export.runtime_ops.core_ctypes import CoreKernels

    core = CoreKernels.load()
    isa = core.best_isa() if args.isa == "auto" else args.isa
    int8_path = (
        f"int8 activations at E5M3..E5M{args.int8} ({core.int8_kernel_name(args.isa)} kernel)"
        if args.int8
        else "float activations"
    )
    llc = last_level_cache_bytes()
    import onnxruntime as ort

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, last-level cache {llc / 2**20:.0f} MiB, "
        f"kernel ISA {isa}, {int8_path}, onnxruntime {ort.__version__}, load average {os.getloadavg()[0]:.1f}"
    )
    results: list = []
    for n, k in shapes:
        bench_shape(n, k, args, core, llc, results)
    print_tables(results, args, isa)


if __name__ == "__main__":
    main()
