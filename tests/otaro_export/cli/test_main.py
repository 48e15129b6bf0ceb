"""The CLI's error contract: every user error is ONE line ``error: ...`` with exit code 2; ``--debug`` shows
the traceback; clamping is a ``warning:`` line. Commands run through ``main()``, as the installed script does."""

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from otaro_export.cli.main import export_entry, main
from otaro_export.errors import ArtifactError, OtaroWarning
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import Session
from otaro_export.testing import TINY_VOCAB, tiny_tokenizer


def run_main(monkeypatch, capsys, *argv, entry=main):
    monkeypatch.setattr(sys, "argv", ["otaro", *argv])
    with pytest.raises(SystemExit) as info:
        entry()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


PREDICTED = tiny_tokenizer().decode([65])


class TinySession(Session):
    """The real Session logic over a backend that always predicts token 65; a context of 256."""

    def __init__(self):
        manifest = Manifest(
            target="onnx",
            artifact="model.onnx",
            kernels="portable",
            kernel_library=None,
            quantized_layers=[],
            inputs=[],
            outputs=[],
            model={"vocab_size": TINY_VOCAB, "max_seq_len": 256, "eos_token_ids": []},
        )
        super().__init__(Path("tiny"), manifest, tiny_tokenizer())

    @property
    def max_seq_len(self) -> int:
        return 256

    def _reset(self) -> None:
        pass

    def _step(self, input_ids, start_pos, bits, last_only=False):
        logits = np.zeros((1, 1 if last_only else input_ids.shape[1], TINY_VOCAB), dtype=np.float32)
        logits[..., 65] = 1.0
        return logits


@pytest.fixture
def loads(monkeypatch):
    calls = []

    def load(path, **_):
        calls.append(path)
        return TinySession()

    monkeypatch.setattr("otaro_export.runtime.load", load)
    return calls


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "x"], "Missing option '--prompt'"),
        (["run", "x", "-p", "hi", "-n", "many"], "Invalid value for '--max-new-tokens'"),
        (["run", "x", "-p", "hi", "--bogus"], "No such option: --bogus"),
        (["frobnicate"], "No such command 'frobnicate'"),
        (["run", "x", "-p", "hi", "-n", "-1"], "--max-new-tokens must be >= 0, got -1"),
        (["run", "x", "-p", "", "--raw"], "--prompt is empty"),
        (["run", "x", "-p", "hi", "--bits", "9"], "bits must be one of [3, 4, 5, 6, 7, 8]"),
    ],
)
def test_usage_and_input_errors_are_one_line_before_loading(monkeypatch, capsys, loads, argv, message):
    code, _, err = run_main(monkeypatch, capsys, *argv)
    assert code == 2
    assert message in one_error_line(err)
    assert loads == []


def test_over_long_prompt_is_one_line(monkeypatch, capsys, loads):
    code, _, err = run_main(monkeypatch, capsys, "run", "x", "-p", "y" * 300, "--raw")
    assert code == 2 and "300 tokens exceed this artifact's context of 256" in one_error_line(err)


def test_clamping_is_reported_as_a_warning_line(monkeypatch, capsys, loads):
    code, out, err = run_main(monkeypatch, capsys, "run", "x", "-p", "y" * 250, "--raw", "-n", "100")
    assert code == 0 and out == PREDICTED * 7 + "\n"
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert warning == [
        "warning: max_new_tokens 100 clamped to 7: the prompt's 250 tokens leave room for 7 in this artifact's "
        "context of 256 (--max-seq-len at export)"
    ]


def test_success_exits_0(monkeypatch, capsys, loads):
    code, out, _ = run_main(monkeypatch, capsys, "run", "x", "-p", "hi", "-n", "3", "--raw")
    assert code == 0 and out == PREDICTED * 3 + "\n"


def test_debug_shows_the_traceback(monkeypatch, capsys):
    def broken(path, **_):
        raise ArtifactError("the artifact is damaged\nsecond line of a runtime's message")

    monkeypatch.setattr("otaro_export.runtime.load", broken)
    code, _, err = run_main(monkeypatch, capsys, "run", "x", "-p", "hi")
    assert code == 2 and one_error_line(err) == "error: the artifact is damaged second line of a runtime's message"
    monkeypatch.setattr(sys, "argv", ["otaro", "run", "x", "--debug", "-p", "hi"])
    with pytest.raises(ArtifactError):
        main()


def test_internal_errors_say_so_and_exit_1(monkeypatch, capsys):
    monkeypatch.setattr("otaro_export.runtime.load", lambda *a, **k: 1 / 0)
    code, _, err = run_main(monkeypatch, capsys, "run", "x", "-p", "hi")
    assert code == 1
    assert "internal error: ZeroDivisionError" in one_error_line(err) and "--debug" in err
    monkeypatch.setenv("OTARO_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["otaro", "run", "x", "-p", "hi"])
    with pytest.raises(ZeroDivisionError):
        main()


def test_value_errors_of_library_option_checks_are_user_errors(monkeypatch, capsys):
    def load(path, **_):
        raise ValueError("warmup_steps and total_steps must be >= 0")

    monkeypatch.setattr("otaro_export.runtime.load", load)
    code, _, err = run_main(monkeypatch, capsys, "run", "x", "-p", "hi")
    assert code == 2 and one_error_line(err) == "error: warmup_steps and total_steps must be >= 0"


def test_os_errors_are_user_errors(monkeypatch, capsys, loads, tmp_path):
    code, _, err = run_main(monkeypatch, capsys, "demo", "x", "--json", str(tmp_path / "no" / "such" / "r.json"))
    assert code == 2 and "No such file or directory" in one_error_line(err)


def test_help_and_no_arguments(monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "--help")
    assert code == 0 and "verify" in out and "--debug" in out
    code, out, _ = run_main(monkeypatch, capsys)
    assert code == 0 and "verify" in out


def test_malformed_manifest_is_one_line(monkeypatch, capsys, tmp_path):
    Manifest(
        target="onnx",
        artifact="model.onnx",
        kernels="portable",
        kernel_library=None,
        quantized_layers=[],
        inputs=[],
        outputs=[],
        model={"vocab_size": "lots"},
    ).save(tmp_path, record_files=False)
    code, _, err = run_main(monkeypatch, capsys, "run", str(tmp_path), "-p", "hi")
    assert code == 2 and "model.vocab_size must be a positive integer, got 'lots'" in one_error_line(err)


@pytest.mark.parametrize("entry", [main, export_entry])
def test_export_output_errors_come_before_the_export(monkeypatch, capsys, tmp_path, entry):
    monkeypatch.setattr("otaro_export.models.load_model", lambda *_: pytest.fail("loaded the model"))
    argv = ["export"] if entry is main else []
    (tmp_path / "file").write_text("x")
    code, _, err = run_main(
        monkeypatch, capsys, *argv, "--target", "onnx", "--output", str(tmp_path / "file"), entry=entry
    )
    assert code == 2 and "is a file; give a directory" in one_error_line(err)
    (tmp_path / "theirs").mkdir()
    (tmp_path / "theirs" / "notes.txt").write_text("x")
    code, _, err = run_main(
        monkeypatch, capsys, *argv, "--target", "onnx", "--output", str(tmp_path / "theirs"), entry=entry
    )
    assert code == 2 and "pass --force" in one_error_line(err)


def test_warnings_filter_is_restored(monkeypatch, capsys, loads):
    before = warnings.showwarning
    run_main(monkeypatch, capsys, "run", "x", "-p", "hi", "-n", "1")
    assert warnings.showwarning is before
    with pytest.warns(OtaroWarning):
        warnings.warn("still a normal warning outside the CLI", OtaroWarning, stacklevel=1)


def test_json_report_still_written(monkeypatch, capsys, loads, tmp_path):
    code, _, _ = run_main(monkeypatch, capsys, "demo", "x", "--json", str(tmp_path / "r.json"))
    assert code == 0 and json.loads((tmp_path / "r.json").read_text())["loads"] == 1
