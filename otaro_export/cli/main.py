"""Entry points. Each subcommand lives in its own module; this file only wires them up."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import typer

from otaro_export.errors import OtaroError, OtaroWarning

try:  # typer >= 0.20 ships its own copy of click; older typers use click itself
    from typer._click.exceptions import ClickException as _TyperClickException
    from typer._click.exceptions import NoArgsIsHelpError as _NoArgsIsHelp
except ImportError:  # pragma: no cover - depends on the installed typer
    _TyperClickException = _NoArgsIsHelp = ()
from click.exceptions import ClickException as _ClickException

app = typer.Typer(
    name="otaro",
    help="Fine-tune an LLM once, ship ONE file, pick the SEFP precision (E5M3..E5M8) per call.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _register() -> None:
    from otaro_export.cli import (
        bench_cmd,
        demo_cmd,
        eval_cmd,
        export_cmd,
        quantize_cmd,
        run_cmd,
        tune_cmd,
        verify_cmd,
    )

    app.command("quantize")(quantize_cmd.quantize)
    app.command("export")(export_cmd.export)
    app.command("run")(run_cmd.run)
    app.command("tune")(tune_cmd.tune)
    app.command("eval")(eval_cmd.evaluate)
    app.command("bench")(bench_cmd.bench)
    app.command("demo")(demo_cmd.demo)
    app.command("verify")(verify_cmd.verify)


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="show the full traceback of an error (anywhere on the line; or OTARO_DEBUG=1)"
    ),
) -> None:
    """Fine-tune an LLM once, ship ONE file, pick the SEFP precision (E5M3..E5M8) per call."""
    # ``--debug`` is taken off the command line by _run before typer parses it; this only documents it.


_register()


def _quiet_third_party_logs() -> None:
    # torchao (pulled in by executorch) warns about CUDA-only extensions on every
    # CPU import, and torch warns about torchao's pytree registrations: noise for users.
    # torch.onnx lists the torchvision ops it skips when torchvision is absent.
    for name in ("torchao", "torch.utils._pytree", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _fail(message: str, code: int = 2) -> None:
    # One line, whatever the exception text holds (onnxruntime messages span lines).
    typer.secho(f"error: {' '.join(str(message).split())}", err=True, fg=typer.colors.RED)
    sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, OtaroWarning):
        typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def _run(typer_app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run the app: user errors are ONE line ``error: ...`` and exit 2; ``--debug`` shows the traceback."""
    _quiet_third_party_logs()
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("OTARO_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "otaro"
    with warnings.catch_warnings():
        warnings.simplefilter("always", OtaroWarning)  # each clamp is news, not only the first
        warnings.showwarning = _show_warning
        try:
            code = typer_app(args=args, prog_name=prog, standalone_mode=False)
        except _NoArgsIsHelp:
            sys.exit(0)  # the help was shown
        except (_TyperClickException, _ClickException) as exc:  # bad usage: unknown option, invalid value...
            if debug:
                raise
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            _fail(exc.format_message() + hint)
        except (OtaroError, OSError, ValueError) as exc:
            # Expected failures (bad input, missing file, damaged artifact...) get one clear line, not a traceback.
            # ValueError too: it is how the option checks of the library layers (tuning, data...) reject a setting.
            if debug:
                raise
            _fail(str(exc) or type(exc).__name__)
        except KeyboardInterrupt:
            if debug:
                raise
            _fail("interrupted", 130)
        except typer.Abort:
            _fail("aborted", 1)
        except Exception as exc:
            if debug:
                raise
            _fail(f"internal error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", 1)
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    _run(app)


def export_entry() -> None:
    """``otaro-export``: the export command on its own."""
    from otaro_export.cli import export_cmd

    single = typer.Typer(pretty_exceptions_enable=False, add_completion=False)
    single.command()(export_cmd.export)
    _run(single)
