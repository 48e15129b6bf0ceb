"""Precision policy: which SEFP precision (E5M3..E5M8) each task runs at.

Lookup order for a task: its name under ``[tasks]``, else its kind under
``[kinds]``, else ``default``. Precisions are written ``"E5M3"`` .. ``"E5M8"``
(case-insensitive) or as bits ``3`` .. ``8``. Every name and kind a policy
you write mentions must exist, so a typo is an error, not a silent fallback.
The built-in policy is the exception: it names tasks of the built-in script,
so with your own script (``otaro demo --tasks mine.toml``) its ``[tasks]``
entries for tasks your script lacks are skipped (``otaro demo`` prints a note)
and your tasks get the precision of their kind.

TOML layout (see examples/policy.toml)::

    default = "E5M8"
    [kinds]
    choose = "E5M3"
    [tasks]
    short_answer = "E5M4"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from otaro_export.demo.tasks import TASK_KINDS, Task
from otaro_export.demo.toml_io import DemoConfigError, check_keys, parse_toml, read_toml
from otaro_export.sefp import SUPPORTED_BITS

_PRECISION = re.compile(r"^E5M(\d+)$", re.IGNORECASE)


def precision_name(bits: int) -> str:
    return f"E5M{bits}"


def parse_precision(value: object, where: str) -> int:
    """``"E5M3"`` / ``3`` -> 3; anything outside E5M3..E5M8 is a DemoConfigError."""
    allowed = f"{precision_name(SUPPORTED_BITS[0])}..{precision_name(SUPPORTED_BITS[-1])}"
    if isinstance(value, bool):
        bits = None
    elif isinstance(value, int):
        bits = value
    elif isinstance(value, str) and (m := _PRECISION.match(value.strip())):
        bits = int(m.group(1))
    else:
        bits = None
    if bits not in SUPPORTED_BITS:
        raise DemoConfigError(
            f"{where}: unknown precision {value!r}; use {allowed} (or bits {SUPPORTED_BITS[0]}..{SUPPORTED_BITS[-1]})"
        )
    return bits


@dataclass(frozen=True)
class Policy:
    default: int | None = None
    kinds: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    source: str = "policy"
    #: a [tasks] name the task script lacks is an error (False for the built-in policy: see the module doc)
    strict_names: bool = True

    def bits_for(self, task: Task) -> int:
        if task.name in self.tasks:
            return self.tasks[task.name]
        if task.kind in self.kinds:
            return self.kinds[task.kind]
        if self.default is not None:
            return self.default
        raise DemoConfigError(
            f"{self.source}: no precision for task '{task.name}' (kind '{task.kind}'): "
            f"add it under [tasks] or [kinds], or set default"
        )

    def unused_names(self, tasks: list[Task]) -> list[str]:
        """``[tasks]`` names that the task script lacks."""
        return sorted(set(self.tasks) - {t.name for t in tasks})

    def plan(self, tasks: list[Task]) -> list[tuple[Task, int]]:
        """Each task with its precision; checks the policy against this task script first."""
        names = {t.name for t in tasks}
        unknown = self.unused_names(tasks)
        if unknown and self.strict_names:
            raise DemoConfigError(
                f"{self.source}: unknown task name(s) {unknown} under [tasks]; the task script has {sorted(names)}"
            )
        return [(t, self.bits_for(t)) for t in tasks]


def _precision_table(data: dict, key: str, source: str) -> dict[str, int]:
    table = data.get(key, {})
    if not isinstance(table, dict):
        raise DemoConfigError(f"{source}: [{key}] must be a table of name = precision")
    return {name: parse_precision(v, f"{source}: [{key}] {name}") for name, v in table.items()}


def parse_policy(data: dict, source: str) -> Policy:
    check_keys(data, {"default", "kinds", "tasks"}, source)
    default = parse_precision(data["default"], f"{source}: default") if "default" in data else None
    kinds = _precision_table(data, "kinds", source)
    unknown_kinds = sorted(set(kinds) - set(TASK_KINDS))
    if unknown_kinds:
        raise DemoConfigError(
            f"{source}: unknown task kind(s) {unknown_kinds} under [kinds]; kinds are {list(TASK_KINDS)}"
        )
    return Policy(default=default, kinds=kinds, tasks=_precision_table(data, "tasks", source), source=source)


def default_policy_text() -> str:
    return resources.files("otaro_export.demo").joinpath("default_policy.toml").read_text(encoding="utf-8")


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy at ``path``, or the built-in one (same as examples/policy.toml)."""
    if path is None:
        policy = parse_policy(parse_toml(default_policy_text(), "built-in policy"), "built-in policy")
        return replace(policy, strict_names=False)
    return parse_policy(read_toml(path), str(path))
