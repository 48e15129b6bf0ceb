"""``otaro export`` / ``otaro-export``: write ONE artifact + tokenizer + manifest.json."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer


class Target(str, Enum):
    onnx = "onnx"
    executorch = "executorch"


class Kernels(str, Enum):
    fused = "fused"
    portable = "portable"


def export(
    target: Target = typer.Option(..., "--target", help="onnx or executorch"),
    model: str = typer.Option(
        "default", "--model", help="'default' (SmolLM2-135M-Instruct), a local HF model dir, or a .gguf file"
    ),
    output: Path = typer.Option(
        ..., "--output", help="directory to write the artifact, tokenizer and manifest.json into"
    ),
    checkpoint: Path = typer.Option(
        None, "--checkpoint", help="an `otaro tune` output directory whose weights replace the model's"
    ),
    kernels: Kernels = typer.Option(
        Kernels.fused, "--kernels", help="fused: project kernel library; portable: standard ops only"
    ),
    quantize_lm_head: bool = typer.Option(False, "--quantize-lm-head", help="also store lm_head in SEFP"),
    max_seq_len: int = typer.Option(512, "--max-seq-len", help="KV-cache capacity (prompt + generated tokens)"),
    external_weights: bool = typer.Option(
        False, "--external-weights", help="executorch: write the weights to model.ptd beside model.pte"
    ),
) -> None:
    """Export a (tuned) HF causal LM to ONE artifact that runs at every precision E5M3..E5M8."""
    from otaro_export.export.pipeline import ExportOptions, export_model

    options = ExportOptions(
        target=target.value,
        model=model,
        output=output,
        checkpoint=checkpoint,
        kernels=kernels.value,
        quantize_lm_head=quantize_lm_head,
        max_seq_len=max_seq_len,
        external_weights=external_weights,
    )
    manifest_path = export_model(options, log=typer.echo)
    typer.echo(f"wrote {manifest_path.parent}")
