"""The demo's task script: an ordered list of tasks an app would run in one session.

Two kinds of task, matching the two kinds of work an on-device LLM does:

* ``choose`` (understanding): pick one of fixed ``options`` (a sentiment label,
  a quiz answer) by the model's mean log-likelihood of each option after the
  prompt and the optional ``answer_prefix``, the words the reply starts with (a chat
  model answers "The review is positive.", not "positive": without the prefix the
  option's first token competes with the reply's usual opening, and the pick is
  noise, even for the float model). Only forward passes: the cheap, low-precision case.
* ``generate`` (writing): greedy text generation of up to ``max_new_tokens``.

TOML layout (see examples/tasks.toml)::

    [[task]]
    name = "sentiment"
    kind = "choose"
    prompt = "Is this review positive or negative? ..."
    options = ["positive", "negative"]
    answer_prefix = "The review is"   # optional: the reply is scored as "The review is positive"
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from otaro_export.demo.toml_io import DemoConfigError, check_keys, parse_toml, read_toml

TASK_KINDS = ("choose", "generate")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
#: generation budget of a task that does not set one
DEFAULT_MAX_NEW_TOKENS = 32
_MAX_NEW_TOKENS_LIMIT = 4096

_KEYS = {
    "choose": {"name", "kind", "prompt", "options", "answer_prefix"},
    "generate": {"name", "kind", "prompt", "max_new_tokens"},
}


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    prompt: str
    options: tuple[str, ...] = field(default=())
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    answer_prefix: str = ""


def _string(table: dict, key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DemoConfigError(f"{where}: '{key}' must be a non-empty string")
    return value


def _parse_task(table: object, index: int, source: str) -> Task:
    where = f"{source}: task #{index + 1}"
    if not isinstance(table, dict):
        raise DemoConfigError(f"{where} must be a table ([[task]])")
    name = _string(table, "name", where)
    if not _NAME.match(name):
        raise DemoConfigError(f"{where}: name {name!r} must be letters, digits, '_' or '-'")
    where = f"{source}: task '{name}'"
    kind = table.get("kind")
    if kind not in TASK_KINDS:
        raise DemoConfigError(f"{where}: kind must be one of {list(TASK_KINDS)}, got {kind!r}")
    check_keys(table, _KEYS[kind], where)
    prompt = _string(table, "prompt", where)
    if kind == "choose":
        options = table.get("options")
        if (
            not isinstance(options, list)
            or len(options) < 2
            or not all(isinstance(o, str) and o.strip() for o in options)
        ):
            raise DemoConfigError(f"{where}: 'options' must be a list of at least 2 non-empty strings")
        if len(set(options)) != len(options):
            raise DemoConfigError(f"{where}: 'options' has duplicates")
        prefix = table.get("answer_prefix", "")
        if not isinstance(prefix, str):
            raise DemoConfigError(f"{where}: 'answer_prefix' must be a string")
        return Task(name, kind, prompt, options=tuple(options), answer_prefix=prefix.strip())
    budget = table.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= _MAX_NEW_TOKENS_LIMIT:
        raise DemoConfigError(f"{where}: 'max_new_tokens' must be an integer in 1..{_MAX_NEW_TOKENS_LIMIT}")
    return Task(name, kind, prompt, max_new_tokens=budget)


def parse_tasks(data: dict, source: str) -> list[Task]:
    check_keys(data, {"task"}, source)
    raw = data.get("task")
    if not isinstance(raw, list) or not raw:
        raise DemoConfigError(f"{source}: needs at least one [[task]] table")
    tasks = [_parse_task(t, i, source) for i, t in enumerate(raw)]
    seen: set[str] = set()
    for t in tasks:
        if t.name in seen:
            raise DemoConfigError(f"{source}: task name '{t.name}' is used twice")
        seen.add(t.name)
    return tasks


def default_tasks_text() -> str:
    return resources.files("otaro_export.demo").joinpath("default_tasks.toml").read_text(encoding="utf-8")


def load_tasks(path: str | Path | None = None) -> list[Task]:
    """The task script at ``path``, or the built-in one (same as examples/tasks.toml)."""
    if path is None:
        return parse_tasks(parse_toml(default_tasks_text(), "built-in task script"), "built-in task script")
    return parse_tasks(read_toml(path), str(path))
