"""``otaro demo`` CLI: argument handling and clean errors (the harness itself: test_demo_harness.py)."""

import json
import re
import sys

import pytest
from typer.testing import CliRunner

from otaro_export.cli.main import app, main
from otaro_export.demo.toml_io import DemoConfigError

runner = CliRunner()


@pytest.fixture
def counted_fake_load(monkeypatch, fake_session):
    """Replace runtime.load with a counting loader returning one FakeSession."""
    loads = []
    session = fake_session()

    def load(path, **_):
        loads.append(path)
        return session

    monkeypatch.setattr("otaro_export.runtime.load", load)
    return loads, session


def test_runs_builtin_script_with_one_load(counted_fake_load, tmp_path):
    loads, session = counted_fake_load
    result = runner.invoke(app, ["demo", str(tmp_path / "model.onnx"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(r["name"], r["precision"]) for r in report["results"]] == [
        ("sentiment", "E5M3"),
        ("reply", "E5M8"),
        ("quiz", "E5M3"),
        ("short_answer", "E5M4"),
    ]
    assert report["loads"] == 1 and report["single_session"]
    assert set(session.bits_seen) == {3, 4, 8}


INVALID_POLICIES = [
    ('default = "E5M9"', "unknown precision 'E5M9'"),
    ("[kinds]\nchoose = 2", "unknown precision 2"),
    ('default = 8\n[tasks]\nsumarize = "E5M3"', r"unknown task name\(s\) \['sumarize'\]"),
    ("default = [", "is not valid TOML"),
]


@pytest.mark.parametrize("policy, message", INVALID_POLICIES)
def test_invalid_policy_is_a_config_error_raised_before_loading(counted_fake_load, tmp_path, policy, message):
    loads, _ = counted_fake_load
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    result = runner.invoke(app, ["demo", "model.onnx", "--policy", str(path)])
    assert isinstance(result.exception, DemoConfigError)
    assert re.search(message, str(result.exception))
    assert loads == []


@pytest.mark.parametrize("policy, message", INVALID_POLICIES)
def test_entry_point_prints_one_clean_line_and_exits_2(
    counted_fake_load, tmp_path, monkeypatch, capsys, policy, message
):
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    monkeypatch.setattr(sys, "argv", ["otaro", "demo", "model.onnx", "--policy", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and re.search(message, err[0])


def test_own_task_script_with_the_builtin_policy(counted_fake_load, tmp_path, monkeypatch, capsys):
    tasks = tmp_path / "mine.toml"
    tasks.write_text('[[task]]\nname = "summarize"\nkind = "generate"\nprompt = "Summarize: hi"\nmax_new_tokens = 4\n')
    monkeypatch.setattr(sys, "argv", ["otaro", "demo", "model.onnx", "--tasks", str(tasks)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 0
    out, err = capsys.readouterr()
    assert "note: built-in policy: no task 'short_answer'" in err and "skipped" in err
    assert "summarize" in out and "E5M8" in out
