"""``otaro demo``: one artifact loaded once, a scripted session of tasks, a precision per task."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def demo(
    artifact: Path = typer.Argument(..., help="an exported .onnx/.pte (or its directory)"),
    policy: Path = typer.Option(
        None,
        "--policy",
        help="precision policy TOML (default: built-in, same as examples/policy.toml; with your own --tasks, its "
        "entries for tasks your script lacks are skipped)",
    ),
    tasks: Path = typer.Option(
        None, "--tasks", help="task script TOML (default: built-in, same as examples/tasks.toml)"
    ),
    json_out: Path = typer.Option(None, "--json", help="also write the session report as JSON here"),
    mobile_bundle: Path = typer.Option(
        None,
        "--write-mobile-bundle",
        help="instead of running, write the model + tokenized tasks + policy for the Android/iOS "
        "example apps into this directory (ONNX artifacts only)",
    ),
) -> None:
    """Load ONE artifact once and run mixed tasks, each at its policy's precision (no reload)."""
    from otaro_export.demo import load_policy, load_tasks, run_demo

    # Parse both files before loading the artifact: a bad policy fails in milliseconds.
    task_list = load_tasks(tasks)
    precision_policy = load_policy(policy)
    precision_policy.plan(task_list)
    for name in precision_policy.unused_names(task_list):  # only the built-in policy gets here
        typer.echo(
            f"note: {precision_policy.source}: no task '{name}' in {tasks or 'the task script'}; its [tasks] entry "
            "is skipped (your tasks run at their kind's precision)",
            err=True,
        )
    if mobile_bundle is not None:
        from otaro_export import runtime
        from otaro_export.demo.mobile_bundle import write_mobile_bundle

        path = write_mobile_bundle(runtime.load(artifact), precision_policy, task_list, mobile_bundle)
        typer.echo(f"wrote {path} (+ the model) for examples/android and examples/ios")
        return
    report = run_demo(artifact, precision_policy, task_list, echo=typer.echo)
    if json_out is not None:
        json_out.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
