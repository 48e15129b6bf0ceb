"""The bench's accuracy runs: the tuned row is measured through the rules its run recorded, as its export is."""

from __future__ import annotations

import json
import sys

import pytest

from otaro_export.bench.accuracy import evaluate_accuracy
from otaro_export.cli.main import main
from otaro_export.testing import tiny_causal_lm
from otaro_export.train import evaluation
from otaro_export.train.checkpoint import META_FILE, resolve_checkpoint


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny llama and a 1-step ``otaro tune`` run of it through center / floor, floors auto, int8 up to E5M4:
    every recorded setting differs from the bench's defaults (fitted, search, floors planned anew, E5M5)."""
    root = tmp_path_factory.mktemp("tiny_run")
    model_dir, run = root / "model", root / "run"
    loaded = tiny_causal_lm(seed=0)
    loaded.model.save_pretrained(str(model_dir))
    loaded.tokenizer.save_pretrained(str(model_dir))
    args = ["otaro", "tune", "--model", model_dir, "--output", run, "--num-samples", 2, "--gen-tokens", 4]
    args += ["--batch-size", 2, "--steps", 1, "--reconstruction", "center", "--exponent-rule", "floor"]
    args += ["--layer-floors", "auto", "--int8-activations", 4]
    patch = pytest.MonkeyPatch()
    patch.setattr(sys, "argv", [str(a) for a in args])
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, f"tune failed with {exc.code}"
    finally:
        patch.undo()
    return model_dir, run


@pytest.fixture
def calls(monkeypatch):
    """``evaluate_model``'s keywords per call, each answered with one row (the rules are what is tested)."""
    seen = []

    def fake_evaluate(*args, **kwargs):
        seen.append(kwargs)
        return [evaluation.PrecisionMetrics("E5M3", 3, 2.0, 0.1, 0.9, 8, 4.125)]

    monkeypatch.setattr(evaluation, "evaluate_model", fake_evaluate)
    return seen


def _accuracy(model_dir, run, **options):
    logged = []
    runs, rules = evaluate_accuracy(
        str(model_dir), (3, 8), 1, 2, checkpoint=run, batch_size=2, log=logged.append, **options
    )
    return runs, rules, logged


def test_the_tuned_row_follows_the_rules_its_run_recorded(tiny_run, calls):
    model_dir, run = tiny_run
    meta = json.loads((resolve_checkpoint(run) / META_FILE).read_text())
    runs, rules, logged = _accuracy(model_dir, run)
    assert set(runs) == {"untuned", "tuned"}
    untuned, tuned = calls
    rule = ("reconstruction", "exponent_rule", "layer_floors", "int8_activations")
    assert tuple(untuned[k] for k in rule) == ("fitted", "search", "auto", 5)  # the export defaults
    assert untuned["plan"] is None and untuned["checkpoint"] is None
    # the tuned weights through the run's rules and its own floor plan (not one planned on the tuned weights)
    assert tuple(tuned[k] for k in rule) == ("center", "floor", "auto", 4)
    assert tuned["plan"].to_dict() == meta["floor_plan"]
    assert tuned["quantize_lm_head"] is True and tuned["baselines"] == ()
    assert "reconstruction: center, as the run was tuned" in logged  # the export's log lines
    # what the report says each row used; the tuned row's from_run as the export's manifest lists it
    assert rules["untuned"] == {
        "reconstruction": "fitted",
        "exponent_rule": "search",
        "layer_floors": "auto",
        "int8_activations": 5,
        "lm_head": "sefp",
    }
    assert rules["tuned"] == {
        "reconstruction": "center",
        "exponent_rule": "floor",
        "layer_floors": "auto",
        "int8_activations": 4,
        "lm_head": "sefp",
        "checkpoint": resolve_checkpoint(run).name,
        "step": 1,
        "from_run": ["reconstruction", "exponent_rule", "layer_floors", "int8_activations", "lm_head"],
    }


def test_options_given_to_the_bench_win_over_the_run(tiny_run, calls):
    model_dir, run = tiny_run
    _, rules, _ = _accuracy(model_dir, run, reconstruction="floor", layer_floors="none")
    tuned = calls[-1]
    assert (tuned["reconstruction"], tuned["exponent_rule"], tuned["layer_floors"]) == ("floor", "floor", "none")
    assert tuned["plan"] is None
    assert rules["tuned"]["from_run"] == ["exponent_rule", "int8_activations", "lm_head"]


def _copy_with_config(run, dest, edit):
    """A copy of the tuned run at ``dest`` whose checkpoint config ``edit(config)`` changed in place."""
    import shutil

    shutil.copytree(run, dest)
    meta_path = resolve_checkpoint(dest) / META_FILE
    meta = json.loads(meta_path.read_text())
    edit(meta["config"])
    meta_path.write_text(json.dumps(meta))
    return dest


def test_a_run_that_recorded_no_rules_keeps_the_export_defaults(tiny_run, calls, tmp_path):
    model_dir, run = tiny_run

    def forget_rules(config):
        for key in ("reconstruction", "exponent_rule", "layer_floors", "int8_activations"):
            del config[key]

    old = _copy_with_config(run, tmp_path / "old", forget_rules)
    _, rules, _ = _accuracy(model_dir, old)
    tuned = calls[-1]
    assert (tuned["reconstruction"], tuned["exponent_rule"], tuned["int8_activations"]) == ("fitted", "search", 5)
    assert tuned["layer_floors"] == "auto" and tuned["plan"] is None  # planned on the tuned weights, as export does
    assert rules["tuned"]["from_run"] == ["lm_head"]  # quantize_lm_head has been recorded from the first tune


def test_an_unusable_recorded_rule_fails_before_anything_is_measured(tiny_run, calls, tmp_path):
    from otaro_export.errors import OtaroError

    model_dir, run = tiny_run
    bad = _copy_with_config(run, tmp_path / "bad", lambda config: config.update(reconstruction="nearest-ish"))
    with pytest.raises(OtaroError, match="reconstruction is unusable"):
        _accuracy(model_dir, bad)
    assert calls == []


def test_the_tuned_rows_read_the_runs_floor_plan(tiny_run):
    """Measured for real: the tuned rows' bits/w are those of the plan the run trained with."""
    model_dir, run = tiny_run
    plan = json.loads((resolve_checkpoint(run) / META_FILE).read_text())["floor_plan"]
    runs, rules, _ = _accuracy(model_dir, run)
    tuned = {r.precision: r for r in runs["tuned"]}
    assert [r.precision for r in runs["tuned"]] == ["E5M3", "E5M8", "FP"]
    assert tuned["E5M3"].bits_per_weight == plan["bits_per_weight"]["3"]
    assert tuned["E5M3"].tokens == runs["untuned"][0].tokens > 0  # the same samples
    assert rules["tuned"]["reconstruction"] == "center"
