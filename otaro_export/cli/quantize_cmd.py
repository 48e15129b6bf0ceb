"""``otaro quantize``: SEFP-quantize a model's decoder linears and report error per precision."""

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
) -> None:
    """Quantize to SEFP once and print weight error (SQNR) and bits/weight for E5M3..E5M8."""
    from otaro_export.models import load_model

    t0 = time.perf_counter()
    loaded = load_model(model)
    typer.echo(f"loaded {loaded.source} ({loaded.model.config.model_type}) in {time.perf_counter() - t0:.1f}s")
    report = quantization_report(loaded.model, quantize_lm_head=quantize_lm_head, progress=True)
    typer.echo(report.to_table())
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
        typer.echo(f"wrote {json_out}")
