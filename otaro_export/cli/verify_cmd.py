"""``otaro verify``: check an artifact end to end (manifest, every file's digest, tokenizer, a run)."""

from __future__ import annotations

from pathlib import Path

import typer


def verify(
    artifact: Path = typer.Argument(..., help="an exported .onnx/.pte (or its directory)"),
    run: bool = typer.Option(True, "--run/--no-run", help="also load it and run every precision once"),
) -> None:
    """Check an exported artifact: manifest, every file against its recorded sha256, tokenizer, and a run."""
    from tqdm import tqdm

    from otaro_export.runtime.verify import verify_artifact

    bar = tqdm(unit="B", unit_scale=True, desc="hashing", leave=False, disable=None)
    try:
        report = verify_artifact(artifact, run=run, log=lambda line: bar.write(line), progress=bar.update)
    finally:
        bar.close()
    typer.echo(f"verified {report.directory}: {len(report.checks)} checks passed")
