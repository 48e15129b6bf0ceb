"""Fused SEFP kernels vs fp32 and 4/8-bit baselines: matvec (decode) and 64-row GEMM (prefill).

Usage: python benchmarks/bench_kernels.py [--threads 2] [--runs 30] [--rows 1 64] [--skip-xnnpack]

Per weight shape [N, K] (out x in) and activation rows M, median latency (us) of
``y = x @ W^T`` over >= 20 timed runs after warm-up, all with the same thread count:

* ``fp32``      onnxruntime MatMul with the float weight
* ``xnnpack``   ExecuTorch XNNPACK fp32 linear (one-op .pte; includes the Python execute() call)
* ``nbits4/8``  onnxruntime MatMulNBits (MatMulNBitsQuantizer, block 64, symmetric, accuracy_level 4)
* ``ort Mk``    ai.otaro::SEFPLinear in onnxruntime (the project's custom-op library), bits k as input
* ``core Mk``   the kernel core called directly (ctypes; its own thread pool), best ISA

``--cold`` evicts the caches before every timed call, as when decoding a model
larger than the L3 cache (each layer's weights then come from DRAM once per token).
Ratios printed below each table: baseline latency / SEFP latency (> 1 means SEFP is faster).
ORT sessions run with IOBinding (inputs/outputs bound once) to keep Python overhead out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from otaro_export import packing, sefp

SHAPES = [(2048, 2048), (4096, 4096), (1536, 576), (576, 1536)]  # SmolLM2: up/gate 576->1536, down 1536->576
BITS = range(3, 9)


_FLUSH: np.ndarray | None = None


def evict_caches() -> None:
    """Write a buffer 3x the size of a large L3 so the next call reads its weights from DRAM."""
    global _FLUSH
    if _FLUSH is None:
        _FLUSH = np.zeros(96 * 2**20 // 4, dtype=np.float32)
    _FLUSH += 1.0


def median_us(fn, runs: int, cold: bool = False) -> float:
    for _ in range(5):
        fn()
    samples = []
    for _ in range(runs):
        if cold:
            evict_caches()
        t0 = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - t0)
    return statistics.median(samples) / 1e3


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return so


def matmul_model(w: torch.Tensor) -> onnx.ModelProto:
    n, k = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "WT"], ["Y"])],
        "fp32_linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", n])],
        initializer=[numpy_helper.from_array(np.ascontiguousarray(w.T.numpy()), "WT")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def nbits_model(w: torch.Tensor, bits: int) -> onnx.ModelProto:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(matmul_model(w), bits=bits, block_size=64, is_symmetric=True, accuracy_level=4)
    quant.process()
    model = quant.model.model
    assert any(n.op_type == "MatMulNBits" for n in model.graph.node), "quantizer did not emit MatMulNBits"
    return model


def sefp_model(packed: packing.PackedSEFP) -> onnx.ModelProto:
    names = ["P0", "P1", "P2", "P3", "E"]
    inits = [numpy_helper.from_array(t.numpy(), n) for n, t in zip(names, [*packed.planes(), packed.exponents])]
    node = helper.make_node("SEFPLinear", ["X", *names, "bits"], ["Y"], domain="ai.otaro")
    graph = helper.make_graph(
        [node],
        "sefp_linear",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", packed.in_features]),
            helper.make_tensor_value_info("bits", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["M", packed.out_features])],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("ai.otaro", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


class OrtRunner:
    """One session, inputs and output bound once; run() is a single C++ call."""

    def __init__(self, model: onnx.ModelProto, so: ort.SessionOptions, feeds: dict[str, np.ndarray], out_shape):
        self.sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        self.binding = self.sess.io_binding()
        self.feeds = feeds
        for name, value in feeds.items():
            self.binding.bind_cpu_input(name, value)
        self.out = np.empty(out_shape, dtype=np.float32)
        self.binding.bind_output("Y", "cpu", 0, np.float32, list(out_shape), self.out.ctypes.data)

    def set_input(self, name: str, value: np.ndarray) -> None:
        self.feeds[name] = value
        self.binding.bind_cpu_input(name, value)

    def run(self) -> None:
        self.sess.run_with_iobinding(self.binding)


def xnnpack_runner(w: torch.Tensor, x: torch.Tensor):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower
    from executorch.runtime import Runtime

    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    lin.weight.data.copy_(w)
    ep = torch.export.export(lin.eval(), (x,))
    program = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()]).to_executorch()
    loaded = Runtime.get().load_program(program.buffer)
    method = loaded.load_method("forward")
    keep = (program, loaded)  # the method borrows the program buffer

    def run():
        keep  # noqa: B018
        method.execute([x])

    return run


def bench_shape(n: int, k: int, rows: int, args, results: dict) -> None:
    from otaro_export.runtime_ops import ort_library
    from otaro_export.runtime_ops.core_ctypes import CoreKernels

    gen = torch.Generator().manual_seed(n * 7 + k)
    w = torch.randn(n, k, generator=gen) * 0.02
    x = torch.randn(rows, k, generator=gen)
    packed = packing.pack(sefp.quantize(w))
    so = session_options(args.threads)
    row: dict[str, float] = {}

    xn = x.numpy()
    row["fp32"] = median_us(OrtRunner(matmul_model(w), so, {"X": xn}, (rows, n)).run, args.runs, args.cold)
    for b in (4, 8):
        row[f"nbits{b}"] = median_us(OrtRunner(nbits_model(w, b), so, {"X": xn}, (rows, n)).run, args.runs, args.cold)
    if not args.skip_xnnpack:
        row["xnnpack"] = median_us(xnnpack_runner(w, x), args.runs, args.cold)

    sefp_runner = OrtRunner(sefp_model(packed), ort_library.session_options(args.threads), {"X": xn}, (rows, n))
    core = CoreKernels.load()
    out = torch.empty(rows, n)
    for bits in BITS:
        sefp_runner.set_input("bits", np.array(bits, dtype=np.int64))
        row[f"ort M{bits}"] = median_us(sefp_runner.run, args.runs, args.cold)
        row[f"core M{bits}"] = median_us(
            lambda bits=bits: core.linear(x, packed, bits, num_threads=args.threads, out=out), args.runs, args.cold
        )
    results[(n, k, rows)] = row
    cells = "  ".join(f"{name}={value:.1f}" for name, value in row.items())
    print(f"  measured N={n} K={k} M={rows}: {cells}", flush=True)


def print_tables(results: dict, args) -> None:
    for rows in args.rows:
        keys = [key for key in results if key[2] == rows]
        if not keys:
            continue
        cols = list(results[keys[0]])
        title = "matvec (decode, M=1)" if rows == 1 else f"GEMM (prefill, M={rows})"
        cache = "cold caches (weights from DRAM)" if args.cold else "warm caches"
        print(f"\n## {title}: median latency in us, {args.threads} threads, {args.runs} runs, {cache}")
        print("| N x K | " + " | ".join(cols) + " |")
        print("|---" * (len(cols) + 1) + "|")
        for key in keys:
            print(f"| {key[0]}x{key[1]} | " + " | ".join(f"{results[key][c]:.1f}" for c in cols) + " |")
        print(f"\nRatios (baseline / fused SEFP in ORT; > 1 = SEFP faster), M={rows}:")
        print("| N x K | " + " | ".join(f"fp32/M{b}" for b in BITS) + " | nbits4/M3 | nbits4/M4 | nbits8/M8 |")
        print("|---" * (len(BITS) + 4) + "|")
        for key in keys:
            r = results[key]
            cells = [f"{r['fp32'] / r[f'ort M{b}']:.2f}" for b in BITS]
            cells += [f"{r['nbits4'] / r['ort M3']:.2f}", f"{r['nbits4'] / r['ort M4']:.2f}",
                      f"{r['nbits8'] / r['ort M8']:.2f}"]  # fmt: skip
            print(f"| {key[0]}x{key[1]} | " + " | ".join(cells) + " |")
    matvec = [key for key in results if key[2] == 1]
    if matvec:
        print("\nGoals (matvec, fused op in ORT):")
        for key in matvec:
            r = results[key]
            m3 = "MET" if r["ort M3"] <= r["nbits4"] else "missed"
            m8 = "MET" if r["ort M8"] < r["fp32"] else "missed"
            print(
                f"  {key[0]}x{key[1]}: E5M3 {r['ort M3']:.1f} us vs MatMulNBits-4 {r['nbits4']:.1f} us ({m3}); "
                f"E5M8 {r['ort M8']:.1f} us vs fp32 {r['fp32']:.1f} us ({m8})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--shapes", nargs="+", default=None, help="NxK (out x in), e.g. 4096x4096")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="evict the caches before every timed call (weights come from DRAM, "
        "as in decoding a model larger than the L3 cache)",
    )
    parser.add_argument("--skip-xnnpack", action="store_true", help="leave out the ExecuTorch XNNPACK baseline")
    args = parser.parse_args()
    if args.runs < 20:
        parser.error("--runs must be >= 20 (medians of fewer runs are too noisy on a shared machine)")
    os.environ["OTARO_NUM_THREADS"] = str(args.threads)
    torch.set_num_threads(args.threads)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes] if args.shapes else SHAPES

    from otaro_export.runtime_ops.core_ctypes import CoreKernels

    core = CoreKernels.load()
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, core ISA {core.best_isa()}, "
          f"{args.threads} threads, cpu count {os.cpu_count()}")  # fmt: skip
    results: dict = {}
    for rows in args.rows:
        for n, k in shapes:
            bench_shape(n, k, rows, args, results)
    print_tables(results, args)


if __name__ == "__main__":
    main()
