"""ExecuTorch .pte of SmolLM2-135M: export cost, size, resident weights and decode speed per precision vs fp32.

Usage: python benchmarks/bench_executorch_precisions.py [--work DIR] [--max-seq-len 128]
       [--kernels fused] [--runs 5] [--new-tokens 32] [--threads 2]

1. Exports (once; reused if DIR already holds them) the SEFP ``.pte`` (one file,
   every precision) and the fp32 XNNPACK baseline of the same decoder; prints
   export seconds (wall, from the manifest), file sizes and kernel/delegate
   calls per decode step.
2. For each precision (and the baseline), in a FRESH process with the ``.pte``
   dropped from the page cache first (so pages of one precision do not count
   for the next): process RSS and the resident part of the mmapped ``.pte``
   after loading (the default load: mmap, no mlock) and after one greedy decode,
   that resident part over the model's weights in fp16, then the median decode
   tokens/s over ``--runs`` greedy generations of ``--new-tokens`` tokens from a
   fixed prompt (stop at EOS off). Ratio = SEFP tok/s / fp32 tok/s (> 1: SEFP faster).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "Explain in one paragraph why the sky is blue."


def measure(directory: str, bits: int, runs: int, new_tokens: int, threads: int) -> dict:
    """Runs in a child process: load, RSS, decode, RSS, timed decodes."""
    import os

    from otaro_export.manifest import Manifest
    from otaro_export.process_memory import mapped_file_rss_mib, rss_mib
    from otaro_export.runtime import load

    pte = Path(directory) / Manifest.load(directory).artifact
    fd = os.open(pte, os.O_RDONLY)  # start cold: what is resident afterwards is what this run read
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    base = rss_mib()
    session = load(directory, num_threads=threads, verify=False)
    after_load, file_load = rss_mib(), mapped_file_rss_mib(pte)
    ids = session.encode_prompt(PROMPT)
    session.generate_ids(ids, bits, new_tokens, stop_at_eos=False)
    after_decode, file_decode = rss_mib(), mapped_file_rss_mib(pte)
    speeds = []
    for _ in range(runs):
        session.generate_ids(ids, bits, new_tokens, stop_at_eos=False)
        speeds.append(session.last_stats.decode_tokens_per_s)
    return {
        "bits": bits,
        "rss_before_mib": base,
        "rss_load_mib": after_load,
        "rss_decode_mib": after_decode,
        "file_load_mib": file_load,
        "file_decode_mib": file_decode,
        "tok_s_median": statistics.median(speeds),
        "tok_s_runs": speeds,
        "prompt_tokens": len(ids),
    }


def _export(work: Path, max_seq_len: int, kernels: str) -> dict:
    from otaro_export.export.executorch_export import export_executorch_fp32
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.manifest import Manifest
    from otaro_export.models import load_model

    info = {}
    sefp_dir, fp32_dir = work / f"sefp_{kernels}", work / "fp32"
    if not (sefp_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        export_model(ExportOptions(target="executorch", output=sefp_dir, kernels=kernels, max_seq_len=max_seq_len))
        info["sefp_export_s"] = time.perf_counter() - t0
    if not (fp32_dir / "manifest.json").exists():
        t0 = time.perf_counter()
        export_executorch_fp32(load_model("default"), fp32_dir, max_seq_len=max_seq_len)
        info["fp32_export_s"] = time.perf_counter() - t0
    for name, d in (("sefp", sefp_dir), ("fp32", fp32_dir)):
        m = Manifest.load(d)
        info[f"{name}_export_s_manifest"] = m.extra.get("export_seconds")
        info[f"{name}_pte_mib"] = (d / m.artifact).stat().st_size / 2**20
        info[f"{name}_calls"] = m.extra.get("calls_per_step", {})
    info["dirs"] = {"sefp": str(sefp_dir), "fp32": str(fp32_dir)}
    info["fp16_weights_mib"] = sum(p.numel() for p in load_model("default").model.parameters()) * 2 / 2**20
    return info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/otaro-bench-executorch")
    ap.add_argument("--max-seq-len", type=int, default=128)
    ap.add_argument("--kernels", default="fused", choices=["fused", "portable"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bits", type=int, nargs="*", default=[3, 4, 5, 6, 7, 8])
    ap.add_argument("--child", nargs=2, metavar=("DIR", "BITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], int(args.child[1]), args.runs, args.new_tokens, args.threads)))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = _export(work, args.max_seq_len, args.kernels)
    print(f"SmolLM2-135M, max_seq_len {args.max_seq_len}, {args.kernels} kernels, {args.threads} threads")
    print(
        f"export: SEFP {info['sefp_export_s_manifest']} s -> {info['sefp_pte_mib']:.1f} MiB; "
        f"fp32 {info['fp32_export_s_manifest']} s -> {info['fp32_pte_mib']:.1f} MiB"
    )
    for name in ("sefp", "fp32"):
        calls = info[f"{name}_calls"]
        print(f"{name}: {calls.get('kernel_calls')} kernel + {calls.get('delegate_calls')} delegate calls per step")

    def child(directory: str, bits: int) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            directory,
            str(bits),
            "--runs",
            str(args.runs),
            "--new-tokens",
            str(args.new_tokens),
            "--threads",
            str(args.threads),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    base = child(info["dirs"]["fp32"], 8)
    rows = [("fp32", base)] + [(f"E5M{k}", child(info["dirs"]["sefp"], k)) for k in args.bits]
    print(
        f"{'precision':>9} | {'RSS load MiB':>12} | {'RSS decode MiB':>14} | {'.pte resident load/decode MiB':>29} "
        f"| {'vs fp16 weights':>15} | {'decode tok/s (median)':>21} | {'vs fp32':>7}"
    )
    for name, r in rows:
        ratio = r["tok_s_median"] / base["tok_s_median"]
        files = f"{r['file_load_mib']:.1f} / {r['file_decode_mib']:.1f}"
        print(
            f"{name:>9} | {r['rss_load_mib']:12.1f} | {r['rss_decode_mib']:14.1f} | {files:>29} "
            f"| {r['file_decode_mib'] / info['fp16_weights_mib']:15.2f} | {r['tok_s_median']:21.2f} | {ratio:7.2f}"
        )
    print(
        f"(prompt {base['prompt_tokens']} tokens, {args.new_tokens} new tokens, {args.runs} runs each; "
        f"RSS before load ~{base['rss_before_mib']:.0f} MiB is the Python + torch baseline; "
        f"fp16 weights {info['fp16_weights_mib']:.1f} MiB; the fp32 .pte keeps XNNPACK's packed weights in anonymous memory)"
    )


if __name__ == "__main__":
    main()
