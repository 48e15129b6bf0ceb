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


class Attention(str, Enum):
    llm_ops = "llm-ops"
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
    reconstruction: str = typer.Option(
        None,
        "--reconstruction",
        help="how truncated mantissas map to values: floor (the paper's), center, fitted (per-layer tables); "
        "default: the best measured (docs/QUALITY.md)",
    ),
    exponents: str = typer.Option(
        None, "--exponents", help="group exponent choice: floor (the paper's) or search; default: the best measured"
    ),
    lm_head: str = typer.Option(
        None,
        "--lm-head",
        help="sefp: tied embedding + lm_head stored once in SEFP; float: keep them float32; default: sefp, or "
        "as the --checkpoint run was tuned (--quantize-lm-head / --no-quantize-lm-head)",
    ),
    lm_head_min_bits: int = typer.Option(
        None, "--lm-head-min-bits", help="lm_head (and tied embedding) run at max(bits, this); default: measured"
    ),
    layer_floors: str = typer.Option(
        None, "--layer-floors", help="auto: per-layer precision floors from measured sensitivity; none: off"
    ),
    int8_activations: int = typer.Option(
        None,
        "--int8-activations",
        metavar="BITS",
        help="run precisions up to E5M<BITS> with int8 activations (per-64-block dynamic quantization; integer "
        "dot-product kernels, docs/FORMAT.md §9); 0: float activations everywhere; default: 5 (onnx and "
        "executorch)",
    ),
    max_seq_len: int = typer.Option(512, "--max-seq-len", help="KV-cache capacity (prompt + generated tokens)"),
    external_weights: bool = typer.Option(
        False, "--external-weights", help="executorch: write the weights to model.ptd beside model.pte"
    ),
    attention: Attention = typer.Option(
        None,
        "--attention",
        help="executorch: llm-ops (default: one attention kernel per layer that also writes the KV cache, the "
        "project's otaro_llm::kv_attention with fused kernels, ExecuTorch's llama:: ops in fp32 programs) or portable "
        "(standard ops only: runs on any ExecuTorch runtime)",
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="export into a non-empty --output that otaro-export did not write (its files of the same names "
        "are replaced; nothing else is touched)",
    ),
) -> None:
    """Export a (tuned) HF causal LM to ONE artifact that runs at every precision E5M3..E5M8."""
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.export.sefp_recipe import default_recipe

    options = ExportOptions(
        target=target.value,
        model=model,
        output=output,
        checkpoint=checkpoint,
        kernels=kernels.value,
        recipe=default_recipe(
            reconstruction=reconstruction,
            exponent_rule=exponents,
            lm_head=lm_head,
            lm_head_min_bits=lm_head_min_bits,
            layer_floors=layer_floors,
            int8_activations=int8_activations,
        ),
        max_seq_len=max_seq_len,
        external_weights=external_weights,
        attention=attention.value if attention is not None else None,
        force=force,
    )
    manifest_path = export_model(options, log=typer.echo)
    typer.echo(f"wrote {manifest_path.parent}")
