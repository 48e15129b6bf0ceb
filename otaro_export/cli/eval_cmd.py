"""``otaro eval``: perplexity, KL to the FP model and top-1 agreement at E5M3..E5M8 + FP (table, JSON, PNG)."""

from __future__ import annotations

import copy
from pathlib import Path

import typer

DEFAULT_EVAL_SEED = 1234


def evaluate(
    model: str = typer.Option(
        "default", "--model", help="'default' (SmolLM2-135M-Instruct), a local HF model dir, or a .gguf file"
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="an `otaro tune` output directory (default: the untuned model, i.e. PTQ)"
    ),
    data: Path = typer.Option(
        None,
        "--data",
        help=".txt/.jsonl file or HF datasets dir; default: the FP model's own sampled answers to held-out prompts",
    ),
    num_samples: int = typer.Option(
        12, "--num-samples", help="evaluation samples (generated, or max read from --data)"
    ),
    gen_tokens: int = typer.Option(64, "--gen-tokens", help="max new tokens per generated evaluation answer"),
    seq_len: int = typer.Option(256, "--seq-len", help="max tokens per sample read from --data"),
    bits: str = typer.Option("3,4,5,6,7,8", "--bits", help="precisions to evaluate"),
    batch_size: int = typer.Option(4, "--batch-size"),
    seed: int = typer.Option(DEFAULT_EVAL_SEED, "--seed", help="sampling seed of the generated evaluation answers"),
    quantize_lm_head: bool = typer.Option(
        None, "--quantize-lm-head/--no-quantize-lm-head", help="default: as the checkpoint was tuned"
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="directory for eval.json and eval.png (default: print only)"
    ),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Measure a (tuned) model at every SEFP precision against its untuned FP self."""
    from otaro_export.cli.options import parse_bits
    from otaro_export.models import load_model
    from otaro_export.sefp import check_bits
    from otaro_export.train.checkpoint import load_tuned_weights, read_meta, resolve_checkpoint
    from otaro_export.train.evaluation import evaluate_precisions, format_table, plot_png, save_json
    from otaro_export.train.fake_quant import attach_fake_quant
    from otaro_export.train.trainer import check_device
    from otaro_export.train.tune_data import EVAL_PROMPTS, load_samples, self_distillation_samples

    check_device(device)
    precisions = tuple(check_bits(b) for b in parse_bits(bits, "--bits"))
    if checkpoint is not None:
        resolved = resolve_checkpoint(checkpoint)  # fail on a bad checkpoint before loading anything
        if quantize_lm_head is None:
            quantize_lm_head = bool(read_meta(resolved).get("config", {}).get("quantize_lm_head", False))
    loaded = load_model(model)
    teacher = loaded.model.to(device).eval()
    student = copy.deepcopy(teacher)
    if checkpoint is not None:
        names = load_tuned_weights(student, checkpoint)
        typer.echo(f"loaded {len(names)} tuned tensors from {checkpoint}")
    attach_fake_quant(student, bool(quantize_lm_head))
    if data is not None:
        samples = load_samples(data, loaded.tokenizer, seq_len=seq_len, max_samples=num_samples)
    else:
        samples = self_distillation_samples(
            teacher, loaded.tokenizer, num_samples, gen_tokens, seed=seed, prompts=EVAL_PROMPTS, progress=True
        )
    rows = evaluate_precisions(student, teacher, samples, precisions, batch_size=batch_size, progress=True)
    name = "tuned" if checkpoint is not None else "untuned (PTQ)"
    typer.echo(format_table(rows, f"{loaded.source}, {name}, {rows[0].tokens} scored tokens"))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        extra = {"model": loaded.source, "checkpoint": None if checkpoint is None else str(checkpoint)}
        save_json({name: rows}, output / "eval.json", extra)
        plot_png({name: rows}, output / "eval.png", title=f"{loaded.source}: {name}")
        typer.echo(f"wrote {output / 'eval.json'} and {output / 'eval.png'}")
