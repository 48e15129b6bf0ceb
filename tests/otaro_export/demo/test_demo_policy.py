from pathlib import Path

import pytest

from otaro_export.demo.policy import load_policy, parse_policy, parse_precision
from otaro_export.demo.tasks import Task, load_tasks
from otaro_export.demo.toml_io import DemoConfigError, parse_toml

REPO = Path(__file__).resolve().parents[3]
TASKS = [
    Task("sentiment", "choose", "p", options=("a", "b")),
    Task("reply", "generate", "p", max_new_tokens=4),
    Task("short_answer", "generate", "p", max_new_tokens=4),
]


@pytest.mark.parametrize("value, bits", [("E5M3", 3), ("e5m8", 8), (" E5M5 ", 5), (4, 4), (8, 8)])
def test_precision_spellings(value, bits):
    assert parse_precision(value, "x") == bits


@pytest.mark.parametrize("value", ["E5M9", "E5M2", "E4M3", "M3", "", 2, 9, 0, True, 3.0, None])
def test_unknown_precision_is_a_clear_error(value):
    with pytest.raises(DemoConfigError, match=r"unknown precision .*E5M3\.\.E5M8"):
        parse_precision(value, "policy.toml: [tasks] reply")


def test_lookup_order_task_then_kind_then_default():
    policy = parse_policy({"default": "E5M7", "kinds": {"generate": 6}, "tasks": {"short_answer": "E5M4"}}, "p")
    assert [b for _, b in policy.plan(TASKS)] == [7, 6, 4]


def test_task_without_any_precision_is_an_error():
    policy = parse_policy({"kinds": {"choose": "E5M3"}}, "p.toml")
    with pytest.raises(DemoConfigError, match="no precision for task 'reply'"):
        policy.plan(TASKS)


def test_unknown_task_name_is_an_error():
    policy = parse_policy({"default": 8, "tasks": {"sentimnet": "E5M3"}}, "p.toml")
    with pytest.raises(DemoConfigError, match=r"unknown task name\(s\) \['sentimnet'\]"):
        policy.plan(TASKS)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"kinds": {"classify": 3}}, r"unknown task kind\(s\) \['classify'\]"),
        ({"task": {"reply": 8}}, r"unknown key\(s\) \['task'\]"),
        ({"tasks": "E5M3"}, r"\[tasks\] must be a table"),
        ({"default": "E5M9"}, "default: unknown precision 'E5M9'"),
    ],
)
def test_malformed_policies(data, message):
    with pytest.raises(DemoConfigError, match=message):
        parse_policy(data, "p.toml")


def test_malformed_toml_names_the_file():
    with pytest.raises(DemoConfigError, match="p.toml is not valid TOML"):
        parse_toml("default = E5M3", "p.toml")  # unquoted string


def test_builtin_defaults_are_the_shipped_examples():
    # examples/ documents the built-in defaults: they must not drift apart.
    from otaro_export.demo.policy import default_policy_text
    from otaro_export.demo.tasks import default_tasks_text

    assert (REPO / "examples/policy.toml").read_text() == default_policy_text()
    assert (REPO / "examples/tasks.toml").read_text() == default_tasks_text()


def test_default_policy_mixes_precisions_over_the_default_tasks():
    plan = {t.name: b for t, b in load_policy().plan(load_tasks())}
    assert plan == {"sentiment": 3, "reply": 8, "quiz": 3, "short_answer": 4}


def test_missing_policy_file(tmp_path):
    with pytest.raises(DemoConfigError, match="does not exist"):
        load_policy(tmp_path / "nope.toml")


def test_python_310_without_tomli_gets_a_clear_error(monkeypatch):
    from otaro_export.demo import toml_io

    monkeypatch.setattr(toml_io, "_toml", None)  # what 3.10 without the tomli backport looks like
    with pytest.raises(DemoConfigError, match="pip install tomli"):
        load_policy()


def test_builtin_policy_with_another_task_script_skips_the_names_it_lacks():
    mine = [Task("summarize", "generate", "p", max_new_tokens=4), Task("classify", "choose", "p", options=("a", "b"))]
    policy = load_policy()
    assert policy.unused_names(mine) == ["short_answer"]
    assert [(t.name, b) for t, b in policy.plan(mine)] == [("summarize", 8), ("classify", 3)]  # by kind
    assert policy.unused_names(load_tasks()) == []


def test_a_policy_file_keeps_names_strict_even_when_it_is_the_builtin_text(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text((REPO / "examples" / "policy.toml").read_text())
    with pytest.raises(DemoConfigError, match=r"unknown task name\(s\) \['short_answer'\]"):
        load_policy(path).plan([Task("summarize", "generate", "p", max_new_tokens=4)])
