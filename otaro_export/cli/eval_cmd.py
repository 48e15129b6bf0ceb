"""``otaro eval``: perplexity, KL to the FP model and top-1 agreement at E5M3..E5M8 + FP (table, JSON, PNG)."""

from __future__ import annotations

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
    reconstruction: str = typer.Option(
        None, "--reconstruction", help="floor (the paper's), center or fitted; default: the export's (docs/QUALITY.md)"
    ),
    exponent_rule: str = typer.Option(
        None, "--exponent-rule", help="floor (the paper's) or search; default: the export's (docs/QUALITY.md)"
    ),
    baselines: str = typer.Option(
        "Q4_0,MXFP4,Q5_0,Q8_0",
        "--baselines",
        help="gguf formats to requantize the same float weights in, printed beside the precisions ('none': skip)",
    ),
    layer_floors: str = typer.Option(
        None,
        "--layer-floors",
        help="none, or auto: per-layer precision floors from measured sensitivity; default: as the checkpoint was "
        "tuned (its floors), else none",
    ),
    floor_budget: float = typer.Option(
        None, "--floor-budget", help="with --layer-floors auto: average weight bits E5M3 may read (default 4.5)"
    ),
    int8_activations: int = typer.Option(
        None,
        "--int8-activations",
        metavar="BITS",
        help="score E5M3..E5M<BITS> with int8 activations, as an export with that option runs them (the "
        "export's default is 5; docs/FORMAT.md §9); 0: float activations; default: as the checkpoint was tuned, "
        "else 0",
    ),
    output: Path = typer.Option(
        None, "--output", "-o", help="directory for eval.json and eval.png (default: print only)"
    ),
    device: str = typer.Option("cpu", "--device"),
) -> None:
    """Measure a (tuned) model at every SEFP precision against its untuned FP self."""
    from otaro_export.cli.options import parse_bits
    from otaro_export.models import load_model
    from otaro_export.reconstruction import DEFAULT_EXPONENT_RULE, DEFAULT_RULE, check_rule
    from otaro_export.sefp import check_bits, check_exponent_rule
    from otaro_export.train.evaluation import BASELINE_FORMATS, evaluate_model, format_table, plot_png, save_json
    from otaro_export.train.trainer import check_device
    from otaro_export.train.tune_data import EVAL_PROMPTS, load_samples, self_distillation_samples

    check_device(device)
    precisions = tuple(check_bits(b) for b in parse_bits(bits, "--bits"))
    formats = parse_baselines(baselines, BASELINE_FORMATS)
    # A tuned run is measured through what it trained with (its rules, the floors planned on the untuned
    # model, its int8 activations), as its export runs it; options given here win.
    recorded = {}
    if checkpoint is not None:
        from otaro_export.train.evaluation import tuned_rule

        recorded = tuned_rule(checkpoint)  # fails on a bad checkpoint before loading anything
    given = dict(
        reconstruction=reconstruction,
        exponent_rule=exponent_rule,
        layer_floors=layer_floors,
        int8_activations=int8_activations,
    )
    from_run = [key for key, value in given.items() if value is None and key in recorded]
    reconstruction = check_rule(reconstruction or recorded.get("reconstruction", DEFAULT_RULE))
    exponent_rule = check_exponent_rule(exponent_rule or recorded.get("exponent_rule", DEFAULT_EXPONENT_RULE))
    plan = recorded.get("plan") if layer_floors is None else None
    layer_floors = recorded.get("layer_floors", "none") if layer_floors is None else layer_floors
    int8_activations = recorded.get("int8_activations", 0) if int8_activations is None else int8_activations
    if layer_floors not in ("none", "auto"):
        raise typer.BadParameter(f"--layer-floors must be none or auto, got {layer_floors!r}")
    from otaro_export.activation_quant import check_max_bits

    try:
        check_max_bits(int8_activations)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--int8-activations") from exc
    settings = {
        "reconstruction": f"reconstruction {reconstruction}",
        "exponent_rule": f"exponents {exponent_rule}",
        "layer_floors": f"floors {layer_floors}",
        "int8_activations": f"int8 activations {f'up to E5M{int8_activations}' if int8_activations else 'off'}",
    }
    if from_run:
        typer.echo(f"as the run was tuned: {', '.join(settings[key] for key in from_run)}")
    loaded = load_model(model)
    teacher = loaded.model.to(device).eval()
    if data is not None:
        samples = load_samples(data, loaded.tokenizer, seq_len=seq_len, max_samples=num_samples)
    else:
        samples = self_distillation_samples(
            teacher, loaded.tokenizer, num_samples, gen_tokens, seed=seed, prompts=EVAL_PROMPTS, progress=True
        )
    rows = evaluate_model(
        teacher,
        loaded.tokenizer,
        samples,
        precisions,
        checkpoint=checkpoint,
        quantize_lm_head=quantize_lm_head,
        reconstruction=reconstruction,
        exponent_rule=exponent_rule,
        baselines=formats,
        layer_floors=layer_floors,
        floor_budget_bits=floor_budget,
        batch_size=batch_size,
        progress=True,
        log=typer.echo,
        int8_activations=int8_activations,
        plan=plan,
    )
    name = "tuned" if checkpoint is not None else "untuned (PTQ)"
    described = ", ".join(f"{text}{' (as tuned)' if key in from_run else ''}" for key, text in settings.items())
    title = f"{loaded.source}, {name}, {described}, {rows[0].tokens} scored tokens"
    typer.echo(format_table(rows, title))
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        extra = {
            "model": loaded.source,
            "checkpoint": None if checkpoint is None else str(checkpoint),
            "reconstruction": reconstruction,
            "exponent_rule": exponent_rule,
            "int8_activations": int8_activations,
            "layer_floors": layer_floors,
            "from_run": from_run,  # the settings above that came from the checkpoint's run, not the defaults
        }
        save_json({name: rows}, output / "eval.json", extra)
        plot_png({name: rows}, output / "eval.png", title=f"{loaded.source}: {name}")
        typer.echo(f"wrote {output / 'eval.json'} and {output / 'eval.png'}")


def parse_baselines(text: str, known) -> tuple[str, ...]:
    """``"Q4_0,MXFP4"`` -> ("Q4_0", "MXFP4"); ``"none"`` or empty -> ()."""
    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return ()
    formats = tuple(f.strip().upper() for f in text.split(",") if f.strip())
    unknown = [f for f in formats if f not in known]
    if unknown:
        raise typer.BadParameter(f"unknown format(s) {', '.join(unknown)}: choose from {', '.join(known)} or none")
    return formats
