"""ExecuTorch: fused SEFP .pte vs the fp32 XNNPACK .pte on a random 4-layer, 1024-wide Llama (one-token decode).

Usage: python benchmarks/bench_executorch_random.py [--work DIR] [--threads 2] [--steps 64] [--repeats 5]
       [--bits 3 8] [--kernels fused]

The model: random Llama, hidden 1024, intermediate 2816, 16 heads (4 KV heads,
head_dim 64), 4 layers, vocabulary 32000, tied embedding (77 M weights, of
which 45 M in the decoder layers), max_seq_len 128. Both programs are
exported once into ``--work`` (reused when present): the SEFP one with
``export_executorch`` (floor reconstruction, every layer and the tied
lm_head in SEFP), the baseline with ``export_executorch_fp32`` (same decoder
graph, float linears on XNNPACK).

Each row runs in a fresh process (resident pages of one precision do not help
the next): a 16-token prefill, then ``--steps`` one-token decode steps, timed
``--repeats`` times; the row reports the median wall ms per step, the median
CPU ms per step of the process (less sensitive to other load on the machine)
and the ratios ``fp32 ms / SEFP ms`` (> 1: SEFP faster). Kernel and delegate
calls per step come from the exported program.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONFIG = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=4,
    num_attention_heads=16,
    num_key_value_heads=4,
    vocab_size=32000,
    tie_word_embeddings=True,
    max_position_embeddings=512,
)
MAX_SEQ_LEN = 128
PREFILL = 16


def random_model():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from otaro_export.models import LoadedModel

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG)).eval()
    return LoadedModel(model=model, tokenizer=None, source="random-llama-4x1024")


def export(work: Path, kernels: str) -> dict:
    from otaro_export.export.executorch_export import export_executorch_fp32
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.manifest import Manifest

    dirs = {"sefp": work / f"sefp-{kernels}", "fp32": work / "fp32"}
    if not (dirs["sefp"] / "manifest.json").exists():
        # floor rule, exponents and no floors: the random model has no tokenizer for calibration text
        recipe = default_recipe(reconstruction="floor", exponent_rule="floor", layer_floors="none")
        options = ExportOptions(
            target="executorch", output=dirs["sefp"], kernels=kernels, recipe=recipe, max_seq_len=MAX_SEQ_LEN
        )
        export_model(options, loaded=random_model())
    if not (dirs["fp32"] / "manifest.json").exists():
        export_executorch_fp32(random_model(), dirs["fp32"], max_seq_len=MAX_SEQ_LEN)
    info = {}
    for name, directory in dirs.items():
        manifest = Manifest.load(directory)
        info[name] = {
            "dir": str(directory),
            "export_s": manifest.extra.get("export_seconds"),
            "mib": (directory / manifest.artifact).stat().st_size / 2**20,
            "calls": manifest.extra.get("calls_per_step", {}),
        }
    return info


def measure(directory: str, bits: int, threads: int, steps: int, repeats: int) -> dict:
    """In a child process: load (mmap), prefill, then time one-token decode steps."""
    import numpy as np

    from otaro_export.runtime import load

    session = load(directory, num_threads=threads, verify=False)
    prompt = np.arange(1, PREFILL + 1, dtype=np.int64)[None]
    token = np.array([[7]], dtype=np.int64)
    walls, cpus = [], []
    for _ in range(repeats + 1):  # the first round pages the weights in
        session._reset()
        session._step(prompt, 0, bits, last_only=True)
        wall, cpu = time.perf_counter(), time.process_time()
        for pos in range(PREFILL, PREFILL + steps):
            session._step(token, pos, bits, last_only=True)
        walls.append((time.perf_counter() - wall) / steps * 1e3)
        cpus.append((time.process_time() - cpu) / steps * 1e3)
    return {"wall_ms": statistics.median(walls[1:]), "cpu_ms": statistics.median(cpus[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/otaro-bench-executorch-random")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--bits", type=int, nargs="*", default=[3, 4, 5, 6, 7, 8])
    ap.add_argument("--kernels", default="fused", choices=["fused", "portable"])
    ap.add_argument("--child", nargs=2, metavar=("DIR", "BITS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if PREFILL + args.steps > MAX_SEQ_LEN:
        ap.error(f"--steps must be <= {MAX_SEQ_LEN - PREFILL}")
    if args.child:
        result = measure(args.child[0], int(args.child[1]), args.threads, args.steps, args.repeats)
        print(json.dumps(result))
        return

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    info = export(work, args.kernels)

    def child(directory: str, bits: int) -> dict:
        cmd = [sys.executable, __file__, "--child", directory, str(bits)]
        cmd += ["--threads", str(args.threads), "--steps", str(args.steps), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    print(f"random Llama 4 x 1024 (vocab 32000), {args.threads} threads, {args.steps} decode steps x {args.repeats}")
    for name in ("sefp", "fp32"):
        row = info[name]
        calls = row["calls"]
        print(
            f"  {name}: {row['mib']:.1f} MiB, export {row['export_s']} s, "
            f"{calls.get('kernel_calls')} kernel + {calls.get('delegate_calls')} delegate calls per step"
        )
    base = child(info["fp32"]["dir"], 8)
    print(f"{'row':>8} | {'wall ms/step':>12} | {'cpu ms/step':>11} | {'fp32/SEFP wall':>14} | {'fp32/SEFP cpu':>13}")
    print(f"{'fp32':>8} | {base['wall_ms']:12.2f} | {base['cpu_ms']:11.2f} | {1.0:14.2f} | {1.0:13.2f}")
    for bits in args.bits:
        r = child(info["sefp"]["dir"], bits)
        print(
            f"{'E5M' + str(bits):>8} | {r['wall_ms']:12.2f} | {r['cpu_ms']:11.2f} | "
            f"{base['wall_ms'] / r['wall_ms']:14.2f} | {base['cpu_ms'] / r['cpu_ms']:13.2f}"
        )


if __name__ == "__main__":
    main()
