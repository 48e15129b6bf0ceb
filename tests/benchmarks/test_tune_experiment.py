"""The tuning experiment's round-to-nearest reference row (a diagnostic quantizer, not the format)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from otaro_export import sefp
from otaro_export.train.fake_quant import ste_fake_quantize

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_experiment.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("tune_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_reference_rounds_to_the_nearest_level_and_restores_truncation():
    script = _load_script()
    torch.manual_seed(0)
    w = torch.randn(8, 130) * 0.05
    step = sefp.exact_pow2(sefp.shared_exponents(sefp._grouped(w)).to(torch.int32) - 2)  # E5M3 level spacing
    step = step.repeat_interleave(sefp.GROUP_SIZE, dim=1)[:, : w.shape[1]]
    truncated = ste_fake_quantize(w, 3)
    with script.round_to_nearest_quantizer():
        rounded = ste_fake_quantize(w, 3)
    assert torch.equal(ste_fake_quantize(w, 3), truncated)  # the real quantizer is back
    # Truncation moves every |w| toward zero by less than one step; rounding moves it by at most
    # half a step either way, except above the top level (7.5 steps) where it clamps to 7.
    t_err, r_err = (w.abs() - truncated.abs()) / step, (w.abs() - rounded.abs()) / step
    assert (t_err >= 0).all() and (t_err < 1).all()
    inside = w.abs() < 7.5 * step
    assert (r_err[inside].abs() <= 0.5).all()
    assert (r_err[~inside] > 0.5).all() and (rounded.abs()[~inside] == 7 * step[~inside]).all()
    assert (rounded.abs() > truncated.abs()).any()  # it really rounds some values up
    assert r_err.abs().mean() < t_err.mean()


def test_rows_train_and_evaluate_through_the_export_rule_with_the_same_floors():
    import copy

    from otaro_export.testing import tiny_causal_lm
    from otaro_export.train.evaluation import evaluate_model
    from otaro_export.train.fake_quant import attach_fake_quant
    from otaro_export.train.teacher import FPTeacher
    from otaro_export.train.tune_config import TuneConfig
    from otaro_export.train.tune_data import EVAL_PROMPTS, TRAIN_PROMPTS, self_distillation_samples

    script = _load_script()
    loaded = tiny_causal_lm(seed=0)
    original, tok = loaded.model, loaded.tokenizer
    train = self_distillation_samples(original, tok, 4, 12, seed=0, prompts=TRAIN_PROMPTS)
    evals = self_distillation_samples(original, tok, 3, 12, seed=1234, prompts=EVAL_PROMPTS)
    teacher = FPTeacher(original, train, original.config.vocab_size)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    # a budget past every floor's cost: every layer (lm_head too) has floor E5M5, so E5M3 reads as E5M5
    rule = script.Rule("fitted", "search", "auto", "sefp", floor_budget=9.0)
    plan = script.plan_once(original, tok, rule)
    assert len(plan.floors) == 2 * 4 + 1 and plan.bits_per_weight[3] == 6.125
    rules = dict(quantize_lm_head=True, reconstruction="fitted", exponent_rule="search")

    def run(name, **cfg):
        return script.run_config(name, TuneConfig(**rules, **cfg), original, loaded, train, evals, teacher, rule, plan)

    _, ptq = run("PTQ (no tuning)", method="ptq")
    # the PTQ row is `otaro eval`'s evaluation of the export rule
    expected = evaluate_model(original, tok, evals, layer_floors="auto", floor_budget_bits=9.0, **rules)
    assert [(r.precision, r.kl, r.top1, r.bits_per_weight) for r in ptq] == [
        (r.precision, r.kl, r.top1, r.bits_per_weight) for r in expected
    ]
    record, tuned = run("BPS AdamW", method="bps", optimizer="adamw", lr=1e-3, steps=3, batch_size=2)
    assert len(record["losses"]) == 3 and record["config"]["reconstruction"] == "fitted"
    by = {r.precision: r for r in tuned}
    assert by["E5M3"].kl == by["E5M5"].kl and by["E5M3"].bits_per_weight == 6.125  # floors at evaluation
    assert by["FP"].kl > 0  # it trained (the tied embedding / lm_head too)
    assert all(torch.equal(v, before[k]) for k, v in original.state_dict().items())  # the untuned model is untouched

    # the default rule is the paper's: the PTQ row is plain fake-quant of the decoder linears
    _, paper = script.run_config(
        "PTQ (no tuning)", TuneConfig(method="ptq"), original, loaded, train, evals, teacher, script.Rule(), None
    )
    student = copy.deepcopy(original)
    attach_fake_quant(student)
    from otaro_export.train.evaluation import evaluate_precisions

    assert [r.kl for r in paper] == [r.kl for r in evaluate_precisions(student, original, evals)]
    with pytest.raises(ValueError, match="paper's grid"):
        run(script.RTN_REFERENCE, method="ptq")
