"""``otaro quantize``: SEFP-quantize a model's decoder linears and report error per precision, rule and outlier."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from otaro_export.quantize_report import quantization_report


def quantize(
    model: str = typer.Option(
        "default", help="'default' (SmolLM2-135M-Instruct), a local HF model dir, or a .gguf file"
    ),
    quantize_lm_head: bool = typer.Option(False, "--quantize-lm-head", help="also quantize lm_head"),
    json_out: Path = typer.Option(None, "--json", help="also write the report as JSON here"),
    calibrate: bool = typer.Option(
        False,
        "--calibrate/--no-calibrate",
        help="collect input statistics on built-in prompts: weights the fitted rule and the exponent search "
        "as the export does, and adds activation-weighted SQNR (slower: the model generates its calibration text)",
    ),
    outliers: bool = typer.Option(True, "--outliers/--no-outliers", help="per-layer outlier statistics"),
) -> None:
    """Quantize to SEFP and print weight error (SQNR) per precision and rule, bits/weight, and outlier statistics."""
    from otaro_export.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(model)
    typer.echo(f"loaded {loaded.source} ({loaded.model.config.model_type}) in {time.perf_counter() - t0:.1f}s")
    stats = None
    if calibrate:
        from otaro_export.calibration import model_input_stats
        from otaro_export.convert import select_sefp_linears

        names = select_sefp_linears(loaded.model, quantize_lm_head)
        stats = model_input_stats(loaded.model, loaded.tokenizer, names, progress=True)
    report = quantization_report(
        loaded.model, quantize_lm_head=quantize_lm_head, progress=True, input_stats=stats, outliers=outliers
    )
    typer.echo(report.to_table())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
