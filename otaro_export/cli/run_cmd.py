"""``otaro run``: load an artifact once and stream a greedy completion at a chosen precision."""

from __future__ import annotations

from pathlib import Path

import typer


def run(
    artifact: Path = typer.Argument(..., help="an exported .onnx/.pte (or its directory)"),
    prompt: str = typer.Option(..., "--prompt", "-p", help="the user message"),
    bits: int = typer.Option(8, "--bits", "-b", help="SEFP precision E5M<bits>, 3..8"),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n"),
    raw: bool = typer.Option(False, "--raw", help="feed the prompt as-is (no chat template)"),
) -> None:
    """Generate text from an exported artifact, streaming tokens as they come."""
    from otaro_export.errors import InvalidInputError
    from otaro_export.runtime import load
    from otaro_export.sefp import check_bits

    # Everything checkable without the artifact fails before the (slow) load.
    check_bits(bits)
    if max_new_tokens < 0:
        raise InvalidInputError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if raw and not prompt:
        raise InvalidInputError("--prompt is empty: with --raw there is nothing to continue")
    session = load(artifact)
    session.generate(
        prompt, bits=bits, max_new_tokens=max_new_tokens, chat=not raw, on_text=lambda t: typer.echo(t, nl=False)
    )
    s = session.last_stats
    typer.echo("")
    typer.secho(
        f"[E5M{bits}] {s.prompt_tokens} prompt tokens at {s.prefill_tokens_per_s:.1f} tok/s, "
        f"{s.new_tokens} new tokens at {s.decode_tokens_per_s:.1f} tok/s",
        err=True,
        dim=True,
    )
