import json
import sys
from types import SimpleNamespace

import pytest

from otaro_export.cli.main import main
from otaro_export.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """The tiny llama saved as a local HF model directory (what --model PATH takes)."""
    path = tmp_path_factory.mktemp("tiny_model")
    loaded = tiny_causal_lm(seed=0)
    loaded.model.save_pretrained(str(path))
    loaded.tokenizer.save_pretrained(str(path))
    return path


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``otaro ARGS`` in-process through the real entry point (clean-error handling included)."""

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["otaro", *map(str, args)])
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return SimpleNamespace(exit_code=code, output=captured.out + captured.err)

    return run


def test_tune_writes_a_resumable_loadable_run_and_eval_reads_it(cli, tiny_dir, tmp_path):
    out = tmp_path / "run"
    common = [
        "--model",
        str(tiny_dir),
        "--output",
        str(out),
        "--num-samples",
        "3",
        "--gen-tokens",
        "6",
        "--batch-size",
        "2",
    ]
    res = cli(
        "tune",
        *common,
        "--steps",
        "3",
        "--optimizer",
        "adamw",
        "--lr",
        "1e-3",
        "--laa-interval",
        "2",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "1",
    )
    assert res.exit_code == 0, res.output
    assert "tuned 3 steps (otaro)" in res.output and (out / "LATEST").is_file()
    saved = json.loads((out / "tune_config.json").read_text())
    assert (saved["method"], saved["lr_schedule"], saved["warmup_steps"]) == ("otaro", "cosine", 1)
    again = cli("tune", *common, "--steps", "3")
    assert again.exit_code == 2 and "--resume" in again.output
    # Without torchrun --parallel changes nothing: one process, as before.
    more = cli("tune", "--output", str(out), "--resume", "--steps", "5", "--parallel", "fsdp", "--device", "cpu")
    assert more.exit_code == 0, more.output
    assert "resumed from ckpt-000003 at step 3" in more.output and "tuned 5 steps" in more.output
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["world_size"], summary["parallel"]) == (1, "none")
    assert json.loads((out / "tune_config.json").read_text())["parallel"] == "ddp"  # the saved settings stay

    report = tmp_path / "eval"
    ev = cli(
        "eval",
        "--model",
        tiny_dir,
        "--checkpoint",
        out,
        "--num-samples",
        2,
        "--gen-tokens",
        6,
        "--bits",
        "3,8",
        "--output",
        report,
    )
    assert ev.exit_code == 0, ev.output
    rows = json.loads((report / "eval.json").read_text())["runs"]["tuned"]
    # the SEFP precisions, then gguf requantizations of the same float weights (docs/QUALITY.md)
    assert [r["precision"] for r in rows] == ["E5M3", "E5M8", "FP", "Q4_0", "MXFP4", "Q5_0", "Q8_0"]
    assert "reconstruction fitted" in ev.output and "Q4_0" in ev.output
    # measured through what the run trained with: its recorded floors and int8 activations (the CLI defaults)
    assert "floors auto (as tuned), int8 activations up to E5M5 (as tuned)" in ev.output
    assert (report / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "E5M3" in ev.output and "top-1" in ev.output


def test_tune_bad_inputs_are_one_clear_line(cli, tiny_dir, tmp_path):
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--data", str(tmp_path / "none.jsonl"))
    assert res.exit_code == 2 and "does not exist" in res.output and "Traceback" not in res.output
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--bits", "3,x")
    assert res.exit_code == 2 and "--bits" in res.output
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--bits", "2,3")
    assert res.exit_code == 2 and "E5M3..E5M8), got 2" in res.output
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--lr-schedule", "linear")
    assert res.exit_code == 2 and "--lr-schedule" in res.output
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--laa-interval", "0")
    assert res.exit_code == 2 and "laa_interval must be" in res.output and "Traceback" not in res.output
    res = cli("tune", "--model", str(tiny_dir), "--output", str(tmp_path / "o"), "--parallel", "zero3")
    assert res.exit_code == 2 and "--parallel" in res.output
    res = cli("tune", "--output", str(tmp_path / "fresh"), "--resume")
    assert res.exit_code == 2 and "nothing to resume" in res.output
    res = cli("eval", "--model", str(tiny_dir), "--device", "tpu9")
    assert res.exit_code == 2 and "unknown device" in res.output


def test_eval_rejects_a_corrupt_checkpoint(cli, tiny_dir, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "LATEST").write_text("ckpt-000001\n")
    (tmp_path / "ck" / "ckpt-000001").mkdir()
    (tmp_path / "ck" / "ckpt-000001" / "model.safetensors").write_bytes(b"garbage")
    (tmp_path / "ck" / "ckpt-000001" / "meta.json").write_text('{"format": "otaro-tune/1"}')
    res = cli("eval", "--model", tiny_dir, "--checkpoint", tmp_path / "ck")
    assert res.exit_code == 2 and "not a readable safetensors" in res.output


def test_floors_and_int8_activations_reach_the_trainer_with_the_export_defaults(cli, tmp_path, monkeypatch):
    from otaro_export.train import trainer
    from otaro_export.train.tune_config import CONFIG_FILE, TuneConfig

    seen = []

    def fake_run(config, output, resume=False, log=print):
        seen.append(config)
        return SimpleNamespace(is_main=False)

    monkeypatch.setattr(trainer, "tune_run", fake_run)
    assert cli("tune", "--output", tmp_path / "a").exit_code == 0
    # the export's default rule: fitted / search, automatic floors, the ONNX export's int8 activations (E5M3..E5M5),
    # the tied embedding / lm_head in SEFP
    got = seen[-1]
    assert (got.reconstruction, got.exponent_rule, got.layer_floors, got.int8_activations, got.quantize_lm_head) == (
        "fitted",
        "search",
        "auto",
        5,
        True,
    )
    args = ("--layer-floors", "none", "--int8-activations", "0", "--no-quantize-lm-head")
    assert cli("tune", "--output", tmp_path / "a", *args).exit_code == 0
    assert (seen[-1].layer_floors, seen[-1].int8_activations, seen[-1].quantize_lm_head) == ("none", 0, False)
    assert cli("tune", "--output", tmp_path / "a", "--int8-activations", "3").exit_code == 0
    assert seen[-1].int8_activations == 3
    assert seen[-1].teacher_cache_bytes == 3 * 2**30  # the default: the log-probs of ~256 SmolLM2 answers
    assert cli("tune", "--output", tmp_path / "a", "--teacher-cache-gib", "6").exit_code == 0
    assert seen[-1].teacher_cache_bytes == 6 * 2**30
    res = cli("tune", "--output", tmp_path / "a", "--teacher-cache-gib", "-1")
    assert res.exit_code == 2 and "Invalid value" in res.output and "Traceback" not in res.output
    del seen[-1]

    res = cli("tune", "--output", tmp_path / "a", "--layer-floors", "some")
    assert res.exit_code == 2 and "--layer-floors" in res.output and "'some'" in res.output
    res = cli("tune", "--output", tmp_path / "a", "--int8-activations", "9")
    assert (
        res.exit_code == 2 and "int8_activations must be 0 (float activations) or a precision 3..8, got 9" in res.output
    )
    assert "Traceback" not in res.output and len(seen) == 3

    # a resumed run keeps what it trained through
    (tmp_path / "a" / CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "a" / CONFIG_FILE).write_text(json.dumps(TuneConfig(layer_floors="auto", int8_activations=4).to_dict()))
    assert cli("tune", "--output", tmp_path / "a", "--resume").exit_code == 0
    assert (seen[-1].layer_floors, seen[-1].int8_activations) == ("auto", 4)
    res = cli("tune", "--output", tmp_path / "a", "--resume", "--int8-activations", "0")
    assert res.exit_code == 2 and "keeps its saved settings" in res.output and "int8_activations" in res.output


@pytest.fixture
def exported_recipes(monkeypatch):
    """The ONNX writer replaced by one that records the recipe it gets and writes an empty graph."""
    import onnx

    from otaro_export.export import onnx_export
    from otaro_export.export.model_info import model_info
    from otaro_export.manifest import Manifest

    recipes = []

    def writer(loaded, options, out, log):
        recipes.append(options.recipe)
        onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(out / "model.onnx"))
        extra = {"sefp_recipe": options.recipe.manifest_fields()}
        info = model_info(loaded.model, loaded.source, options.max_seq_len)
        return Manifest("onnx", "model.onnx", "fused", "onnxruntime", [], [], [], info, extra=extra)

    monkeypatch.setattr(onnx_export, "export_onnx", writer)
    return recipes


def test_export_and_eval_follow_the_reconstruction_and_exponent_rule_the_run_recorded(
    cli, tiny_dir, tmp_path, monkeypatch, exported_recipes
):
    """A run tuned through center / floor (not the defaults fitted / search) is exported and measured through them."""
    from otaro_export.manifest import Manifest
    from otaro_export.train import evaluation
    from otaro_export.train.checkpoint import META_FILE, resolve_checkpoint

    run = tmp_path / "run"
    rules = ("--reconstruction", "center", "--exponent-rule", "floor", "--layer-floors", "none")
    small = ("--num-samples", 2, "--gen-tokens", 4, "--batch-size", 2, "--steps", 1, "--int8-activations", 0)
    res = cli("tune", "--model", tiny_dir, "--output", run, *small, *rules)
    assert res.exit_code == 0, res.output
    meta_path = resolve_checkpoint(run) / META_FILE
    config = json.loads(meta_path.read_text())["config"]
    assert (config["reconstruction"], config["exponent_rule"]) == ("center", "floor")  # tune records them

    seen = []

    def fake_evaluate(*args, **kwargs):
        seen.append(kwargs)
        return [evaluation.PrecisionMetrics("E5M3", 3, 2.0, 0.1, 0.9, 8, 4.125)]

    monkeypatch.setattr(evaluation, "evaluate_model", fake_evaluate)
    evaluate = ("eval", "--model", tiny_dir, "--checkpoint", run, "--num-samples", 1, "--gen-tokens", 2)
    res = cli(*evaluate, "--bits", 3, "--baselines", "none", "--output", tmp_path / "ev")
    assert res.exit_code == 0, res.output
    assert (seen[-1]["reconstruction"], seen[-1]["exponent_rule"]) == ("center", "floor")
    taken = "as the run was tuned: reconstruction center, exponents floor, floors none, int8 activations off"
    assert taken in res.output
    assert "reconstruction center (as tuned), exponents floor (as tuned)" in res.output
    saved = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (saved["reconstruction"], saved["from_run"][:2]) == ("center", ["reconstruction", "exponent_rule"])
    # explicit options win
    res = cli(*evaluate, "--reconstruction", "fitted", "--exponent-rule", "search", "--baselines", "none")
    assert res.exit_code == 0, res.output
    assert (seen[-1]["reconstruction"], seen[-1]["exponent_rule"]) == ("fitted", "search")
    assert "as the run was tuned: floors none, int8 activations off" in res.output
    assert "reconstruction fitted, exponents search, floors none (as tuned)" in res.output

    recipes = exported_recipes
    export = ("export", "--target", "onnx", "--model", tiny_dir, "--checkpoint", run)
    res = cli(*export, "--output", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert (recipes[-1].reconstruction, recipes[-1].exponent_rule) == ("center", "floor")
    assert "reconstruction: center, as the run was tuned" in res.output and "exponents: floor, as the run" in res.output
    assert Manifest.load(tmp_path / "a").extra["tuned_run"]["from_run"][:2] == ["reconstruction", "exponent_rule"]
    res = cli(*export, "--output", tmp_path / "b", "--reconstruction", "floor", "--exponents", "search")
    assert res.exit_code == 0, res.output
    assert (recipes[-1].reconstruction, recipes[-1].exponent_rule) == ("floor", "search")

    # a run saved before tune recorded its rules (nor floors, nor int8 activations): today's defaults
    meta = json.loads(meta_path.read_text())
    for key in ("reconstruction", "exponent_rule", "layer_floors", "int8_activations"):
        del meta["config"][key]
    meta_path.write_text(json.dumps(meta))
    res = cli(*evaluate, "--baselines", "none")
    assert res.exit_code == 0, res.output
    assert (seen[-1]["reconstruction"], seen[-1]["exponent_rule"]) == ("fitted", "search")
    assert "as the run was tuned" not in res.output and "(as tuned)" not in res.output
    res = cli(*export, "--output", tmp_path / "c", "--layer-floors", "none")
    assert res.exit_code == 0, res.output
    assert (recipes[-1].reconstruction, recipes[-1].exponent_rule) == ("fitted", "search")
    # quantize_lm_head has been recorded from the first tune: the lm_head still follows the run
    assert Manifest.load(tmp_path / "c").extra["tuned_run"]["from_run"] == ["lm_head"]


def test_the_export_keeps_the_lm_head_float_for_a_run_tuned_with_a_float_lm_head(
    cli, tiny_dir, tmp_path, exported_recipes
):
    """tune --no-quantize-lm-head: eval measures a float lm_head, so the export's default is --lm-head float."""
    from otaro_export.manifest import Manifest
    from otaro_export.train.checkpoint import META_FILE, resolve_checkpoint

    run = tmp_path / "run"
    small = ("--num-samples", 2, "--gen-tokens", 4, "--batch-size", 2, "--steps", 1, "--int8-activations", 0)
    res = cli("tune", "--model", tiny_dir, "--output", run, *small, "--layer-floors", "none", "--no-quantize-lm-head")
    assert res.exit_code == 0, res.output
    meta_path = resolve_checkpoint(run) / META_FILE
    assert json.loads(meta_path.read_text())["config"]["quantize_lm_head"] is False

    export = ("export", "--target", "onnx", "--model", tiny_dir, "--checkpoint", run)
    res = cli(*export, "--output", tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert exported_recipes[-1].lm_head == "float" and "lm_head: float, as the run was tuned" in res.output
    manifest = Manifest.load(tmp_path / "a")
    assert manifest.extra["sefp_recipe"]["lm_head"] == "float" and "lm_head" in manifest.extra["tuned_run"]["from_run"]
    # an explicit --lm-head wins, and is not listed as taken from the run
    res = cli(*export, "--output", tmp_path / "b", "--lm-head", "sefp")
    assert res.exit_code == 0, res.output
    assert exported_recipes[-1].lm_head == "sefp" and "lm_head: " not in res.output
    assert "lm_head" not in Manifest.load(tmp_path / "b").extra["tuned_run"]["from_run"]
    # a meta.json without the setting: the export's default
    meta = json.loads(meta_path.read_text())
    del meta["config"]["quantize_lm_head"]
    meta_path.write_text(json.dumps(meta))
    res = cli(*export, "--output", tmp_path / "c")
    assert res.exit_code == 0, res.output
    assert exported_recipes[-1].lm_head == "sefp"
    assert "lm_head" not in Manifest.load(tmp_path / "c").extra["tuned_run"]["from_run"]
