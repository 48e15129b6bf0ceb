"""``otaro-export`` options reach ExportOptions; ``--attention`` is checked before any model is loaded."""

import sys

import pytest

from otaro_export.cli.main import export_entry


def _run(monkeypatch, capsys, *argv):
    monkeypatch.setattr(sys, "argv", ["otaro-export", *argv])
    with pytest.raises(SystemExit) as info:
        export_entry()
    out, err = capsys.readouterr()
    return info.value.code, out, err


@pytest.fixture
def no_model(monkeypatch):
    monkeypatch.setattr("otaro_export.models.load_model", lambda *_: pytest.fail("loaded the model"))


@pytest.mark.parametrize(("given", "want"), [([], None), (["--attention", "portable"], "portable")])
def test_attention_reaches_the_export_options(monkeypatch, capsys, tmp_path, given, want):
    seen = []

    def fake_export(options, log):
        options.validate()
        seen.append(options)
        return tmp_path / "manifest.json"

    monkeypatch.setattr("otaro_export.export.pipeline.export_model", fake_export)
    code, _, err = _run(monkeypatch, capsys, "--target", "executorch", "--output", str(tmp_path), *given)
    assert code in (0, None), err
    assert seen[0].attention == want


def test_attention_is_for_executorch_only(monkeypatch, capsys, tmp_path, no_model):
    code, _, err = _run(monkeypatch, capsys, "--target", "onnx", "--output", str(tmp_path), "--attention", "portable")
    assert (
        code == 2
        and err.strip() == "error: --attention applies to --target executorch only (ONNX has one attention graph)"
    )


def test_a_bad_attention_value_names_the_choices(monkeypatch, capsys, tmp_path, no_model):
    code, _, err = _run(monkeypatch, capsys, "--target", "executorch", "--output", str(tmp_path), "--attention", "sdpa")
    assert code == 2 and "sdpa" in err and "llm-ops" in err and "portable" in err, err


def test_lm_head_is_left_to_a_tuned_run_unless_given(monkeypatch, capsys, tmp_path):
    """Without --lm-head a --checkpoint run's recorded lm_head replaces the default sefp; a given one stays."""
    seen = []

    def fake_export(options, log):
        seen.append(options.recipe)
        return tmp_path / "manifest.json"

    monkeypatch.setattr("otaro_export.export.pipeline.export_model", fake_export)
    float_run = {"config": {"quantize_lm_head": False}}
    for given, want in (([], "float"), (["--lm-head", "sefp"], "sefp")):
        code, _, err = _run(monkeypatch, capsys, "--target", "onnx", "--output", str(tmp_path), *given)
        assert code in (0, None), err
        assert seen[-1].lm_head == "sefp"
        assert seen[-1].with_tuned_run(float_run, print)[0].lm_head == want, given
