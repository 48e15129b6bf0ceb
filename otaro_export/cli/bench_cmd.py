"""``otaro bench``: speed, memory and accuracy per SEFP precision vs fp32 exports and llama.cpp."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer


def bench(
    model: str = typer.Option(
        "default",
        "--model",
        help="'default' (SmolLM2-135M-Instruct GGUF; enables the llama.cpp baseline), a local HF model dir, or a .gguf file",
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        help="an `otaro tune` output: adds the tuned model's accuracy (speed does not depend on the weights' values)",
    ),
    output: Path = typer.Option(
        Path("bench-results"), "--output", "-o", help="directory for bench.json, bench.txt, speed.png, accuracy.png"
    ),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="a few minutes on cached exports: E5M3/E5M8, 32 tokens x 2 runs, no portable fallbacks, tiny accuracy set",
    ),
    bits: str = typer.Option(
        None, "--bits", help="precisions to measure, e.g. 3,4,5,6,7,8 (default: all; --quick: 3,8)"
    ),
    targets: str = typer.Option("onnx,executorch", "--targets", help="runtimes to measure: onnx, executorch or both"),
    threads: int = typer.Option(
        2, "--threads", help="threads for every engine (ORT intra-op, ExecuTorch/XNNPACK, SEFP kernels, llama.cpp)"
    ),
    new_tokens: int = typer.Option(
        None, "--new-tokens", help="tokens generated per timed run (default 128; --quick 32)"
    ),
    runs: int = typer.Option(
        None,
        "--runs",
        help="timed runs per configuration, after one warm-up: the rounds of the interleaved schedule (one run of "
        "every configuration per round); medians and per-round ratios are reported (default 5; --quick 2)",
    ),
    prompt: str = typer.Option(
        None, "--prompt", help="the prompt every configuration decodes after (chat template applied)"
    ),
    max_seq_len: int = typer.Option(
        256, "--max-seq-len", help="KV-cache length of the exported artifacts (part of the export cache key)"
    ),
    portable: bool = typer.Option(
        None,
        "--portable/--no-portable",
        help="also time the no-library fallbacks (ONNX function body, ExecuTorch portable .pte); default: on, off with --quick",
    ),
    llama_cpp: bool = typer.Option(
        True, "--llama-cpp/--no-llama-cpp", help="the llama.cpp baseline (llama-cpp-python) on the GGUF"
    ),
    ort_genai: bool = typer.Option(
        True,
        "--ort-genai/--no-ort-genai",
        help="the onnxruntime-genai int4 anchor (its model builder on the same float model; needs onnxruntime-genai)",
    ),
    accuracy: bool = typer.Option(
        True, "--accuracy/--no-accuracy", help="perplexity / KL to FP per precision (otaro eval's library)"
    ),
    eval_samples: int = typer.Option(None, "--eval-samples", help="accuracy samples (default 12; --quick 2)"),
    export: bool = typer.Option(
        True,
        "--export/--no-export",
        help="export configurations missing from the cache (minutes each); --no-export reports them as not measured",
    ),
    rerender: bool = typer.Option(
        False, "--rerender", help="measure nothing: rewrite the table, goals and plots in --output from its bench.json"
    ),
    cache_dir: Path = typer.Option(
        None, "--cache-dir", help="where exported artifacts are cached (default ~/.cache/otaro-export/bench)"
    ),
) -> None:
    """Benchmark one stored model at every precision against its fp32 exports and llama.cpp; print, JSON, PNG."""
    from otaro_export.bench.configs import BenchSettings, quick_settings
    from otaro_export.bench.runner import rerender as rerender_report
    from otaro_export.bench.runner import run_bench
    from otaro_export.cli.options import parse_bits, parse_choices

    if rerender:
        typer.echo(rerender_report(output)["text"])
        return

    settings = BenchSettings(
        model=model,
        checkpoint=checkpoint,
        output=output,
        threads=threads,
        max_seq_len=max_seq_len,
        llama_cpp=llama_cpp,
        ort_genai=ort_genai,
        accuracy=accuracy,
        cache_dir=cache_dir,
        export_missing=export,
        targets=parse_choices(targets, "--targets", ("onnx", "executorch")),
    )
    if quick:
        settings = quick_settings(settings)
    overrides = {
        "bits": parse_bits(bits, "--bits") if bits is not None else None,
        "new_tokens": new_tokens,
        "runs": runs,
        "portable": portable,
        "eval_samples": eval_samples,
        "prompt": prompt,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    result = run_bench(settings, log=typer.echo)
    typer.echo("")
    typer.echo(result["text"])
    typer.echo(f"\nwrote {output / 'bench.json'}, {output / 'bench.txt'} and the PNG plots")
