"""Decode speed of ONE SEFP ONNX artifact at E5M3/E5M8 (fused library and function fallback) vs fp32.

Usage::

    python benchmarks/onnx_decode.py [--model default] [--work DIR] [--tokens 32] [--repeats 3] [--threads 2]

Exports the model twice into ``DIR`` (SEFP via ``export_onnx`` and the fp32
baseline via ``export_onnx_fp32``) unless a finished export is already there,
then times greedy decoding (prefill excluded) with :class:`OnnxSession`.
Prints one table: median decode tokens/s over ``--repeats`` runs and the ratio
to fp32, plus export time and file sizes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

PROMPT = "Write a short story about a robot who learns to paint."


def _export(model: str, directory: Path, fp32: bool) -> float | None:
    from otaro_export.export.onnx_export import export_onnx_fp32
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.manifest import MANIFEST_NAME
    from otaro_export.models import load_model

    if (directory / MANIFEST_NAME).is_file():
        return None
    options = ExportOptions(target="onnx", model=model, output=directory, max_seq_len=256)
    t0 = time.perf_counter()
    if not fp32:
        export_model(options, log=print)
        return time.perf_counter() - t0
    loaded = load_model(model)
    t0 = time.perf_counter()
    manifest = export_onnx_fp32(loaded, options, directory, print)
    loaded.tokenizer.save_pretrained(str(directory / manifest.tokenizer))
    manifest.save(directory)
    return time.perf_counter() - t0


def _decode_rate(session, bits: int, tokens: int, repeats: int) -> float:
    ids = session.encode_prompt(PROMPT)
    session.generate_ids(ids, bits, 4, stop_at_eos=False)  # warm-up (allocations, first-run costs)
    rates = []
    for _ in range(repeats):
        session.generate_ids(ids, bits, tokens, stop_at_eos=False)
        rates.append(session.last_stats.decode_tokens_per_s)
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--work", type=Path, default=Path("bench-out/onnx"))
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from otaro_export.runtime import load

    sefp_dir, fp32_dir = args.work / "sefp", args.work / "fp32"
    export_s = {"sefp": _export(args.model, sefp_dir, False), "fp32": _export(args.model, fp32_dir, True)}
    rows = []
    fp32 = load(fp32_dir, num_threads=args.threads)
    base = _decode_rate(fp32, 8, args.tokens, args.repeats)
    rows.append(("fp32", "-", base))
    for use_library, label in ((True, "fused"), (False, "fallback")):
        t0 = time.perf_counter()
        session = load(sefp_dir, num_threads=args.threads, use_library=use_library)
        load_s = time.perf_counter() - t0
        for bits in (3, 8):
            rows.append(
                (
                    f"sefp {label} (load {load_s:.1f}s)",
                    f"E5M{bits}",
                    _decode_rate(session, bits, args.tokens, args.repeats),
                )
            )
        del session

    def size(d: Path) -> float:
        return sum(p.stat().st_size for p in d.glob("model.onnx*")) / 2**20

    print()
    print(f"model={args.model} threads={args.threads} new_tokens={args.tokens} repeats={args.repeats} (median)")
    for name, d in (("sefp", sefp_dir), ("fp32", fp32_dir)):
        took = export_s[name]
        print(f"  {name}: {size(d):.1f} MiB on disk" + (f", exported in {took:.0f}s" if took else " (reused)"))
    print(f"{'artifact':34s} {'bits':6s} {'decode tok/s':>12s} {'vs fp32':>8s}")
    for name, bits, rate in rows:
        print(f"{name:34s} {bits:6s} {rate:12.2f} {rate / base:8.2f}")


if __name__ == "__main__":
    main()
