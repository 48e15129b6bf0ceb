"""Entry points. Each subcommand lives in its own module; this file only wires them up."""

from __future__ import annotations

import logging
import sys

import typer

from otaro_export.errors import OtaroError

app = typer.Typer(
    name="otaro",
    help="Fine-tune an LLM once, ship ONE file, pick the SEFP precision (E5M3..E5M8) per call.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from otaro_export.cli import bench_cmd, demo_cmd, eval_cmd, export_cmd, quantize_cmd, run_cmd, tune_cmd

    app.command("quantize")(quantize_cmd.quantize)
    app.command("export")(export_cmd.export)
    app.command("run")(run_cmd.run)
    app.command("tune")(tune_cmd.tune)
    app.command("eval")(eval_cmd.evaluate)
    app.command("bench")(bench_cmd.bench)
    app.command("demo")(demo_cmd.demo)


_register()


def _quiet_third_party_logs() -> None:
    # torchao (pulled in by executorch) warns about CUDA-only extensions on every
    # CPU import, and torch warns about torchao's pytree registrations: noise for users.
    # torch.onnx lists the torchvision ops it skips when torchvision is absent.
    for name in ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _run(typer_app: typer.Typer) -> None:
    _quiet_third_party_logs()
    try:
        typer_app()
    except OtaroError as exc:
        # Expected failures (bad input, missing library...) get one clear line, not a traceback.
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)


def main() -> None:
    _run(app)


def export_entry() -> None:
    """``otaro-export``: the export command on its own."""
    from otaro_export.cli import export_cmd

    single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    single.command()(export_cmd.export)
    _run(single)
