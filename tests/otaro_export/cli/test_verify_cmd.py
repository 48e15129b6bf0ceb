"""``otaro verify`` on the command line: ok lines, then one summary; a failure is one error line, exit 2."""

import shutil
import sys

import pytest

from otaro_export.cli.main import main


def run_main(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["otaro", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_verify_ok_and_damaged(tiny_onnx, tmp_path, monkeypatch, capsys):
    source, _ = tiny_onnx("llama")
    artifact = tmp_path / "a"
    shutil.copytree(source, artifact)
    code, out, err = run_main(monkeypatch, capsys, "verify", str(artifact / "model.onnx"))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == ["manifest", "files", "tokenizer", "run"]
    assert lines[-1] == f"verified {artifact}: 4 checks passed"

    (artifact / "tokenizer" / "tokenizer.json").write_text("{}")
    code, out, err = run_main(monkeypatch, capsys, "verify", str(artifact), "--no-run")
    assert code == 2
    assert out.strip().splitlines() == [out.strip().splitlines()[0]] and "manifest" in out  # stopped after it
    (line,) = err.strip().splitlines()
    assert line.startswith("error: ") and "tokenizer.json has 2 bytes" in line
