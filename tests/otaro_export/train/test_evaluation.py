import copy

import numpy as np
import pytest
import torch

from otaro_export.train.evaluation import (
    BASELINE_FORMATS,
    PrecisionMetrics,
    evaluate_baselines,
    evaluate_model,
    format_table,
    gguf_requantize,
)


def test_gguf_requantize_is_gguf_py_reference(rng):
    from gguf import GGMLQuantizationType, quants

    w = torch.randn(4, 96, generator=rng) * 0.05
    for fmt, bits in BASELINE_FORMATS.items():
        got = gguf_requantize(w, fmt)
        qtype = GGMLQuantizationType[fmt]
        expected = quants.dequantize(quants.quantize(w.numpy(), qtype), qtype)
        assert np.array_equal(got.numpy(), expected.astype(np.float32))
        # more bits per weight, less error: the formats are ordered by size
        assert bits > 4
    errors = [float((gguf_requantize(w, f) - w).pow(2).sum()) for f in ("Q4_0", "Q5_0", "Q8_0")]
    assert errors[0] > errors[1] > errors[2] > 0
    with pytest.raises(ValueError, match="multiple of 32"):
        gguf_requantize(torch.zeros(2, 40), "Q4_0")
    with pytest.raises(ValueError, match="unknown baseline format"):
        gguf_requantize(w, "Q3_K")


def test_baselines_leave_the_model_unchanged_and_rank_by_size(tiny, chat_samples):
    model = tiny.model
    teacher = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")]
    rows = evaluate_baselines(model, teacher, chat_samples, names, ("Q4_0", "Q8_0"))
    assert [r.precision for r in rows] == ["Q4_0", "Q8_0"]
    assert [r.bits_per_weight for r in rows] == [4.5, 8.5]
    assert rows[0].kl > rows[1].kl > 0 and rows[1].top1 >= rows[0].top1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_evaluate_model_runs_the_rule_and_prints_baselines_beside_precisions(tiny, chat_samples):
    rows = evaluate_model(
        tiny.model,
        tiny.tokenizer,
        chat_samples,
        (3, 8),
        reconstruction="fitted",
        exponent_rule="search",
        baselines=("Q4_0", "MXFP4", "Q8_0"),
    )
    names = [r.precision for r in rows]
    assert names == ["E5M3", "E5M8", "FP", "Q4_0", "MXFP4", "Q8_0"]
    by = {r.precision: r for r in rows}
    assert by["FP"].kl == 0.0 and by["E5M3"].kl > by["E5M8"].kl
    assert by["E5M3"].bits_per_weight == 4.125 and by["E5M8"].bits_per_weight == 9.125
    table = format_table(rows, "t").splitlines()
    order = [line.split()[0] for line in table[2:]]
    # each gguf format right after the SEFP precision that reads no more bits than it does
    assert order == ["E5M3", "MXFP4", "Q4_0", "Q8_0", "E5M8", "FP"]


def test_format_table_places_each_baseline_after_the_nearest_smaller_precision():
    def row(name, bits, bpw):
        return PrecisionMetrics(name, bits, 1.0, 0.1, 0.9, 10, bpw)

    rows = [row(f"E5M{b}", b, bpw) for b, bpw in zip(range(3, 9), (4.125, 6.125, 6.125, 8.125, 8.125, 9.125))]
    rows += [row("FP", None, None)] + [row(f, None, b) for f, b in BASELINE_FORMATS.items()]
    order = [line.split()[0] for line in format_table(rows).splitlines()[1:]]
    assert order == ["E5M3", "MXFP4", "Q4_0", "Q5_0", "E5M4", "E5M5", "E5M6", "E5M7", "Q8_0", "E5M8", "FP"]


def test_evaluate_model_applies_automatic_floors(tiny, chat_samples):
    # a budget past every floor's cost: every layer runs at least at E5M5, so E5M3 == E5M5
    rows = evaluate_model(tiny.model, tiny.tokenizer, chat_samples, (3, 5), layer_floors="auto", floor_budget_bits=9.0)
    by = {r.precision: r for r in rows}
    assert by["E5M3"].kl == by["E5M5"].kl and by["E5M3"].bits_per_weight == 6.125
    with pytest.raises(ValueError, match="layer_floors"):
        evaluate_model(tiny.model, tiny.tokenizer, chat_samples, (3,), layer_floors="some")


def test_attach_export_rule_keeps_a_given_plan_and_measures_float_weights(tiny, chat_samples):
    import copy

    from otaro_export.train.evaluation import attach_export_rule
    from otaro_export.train.fake_quant import fake_quant_layers, set_precision

    kwargs = dict(quantize_lm_head=True, reconstruction="fitted", exponent_rule="search", layer_floors="auto")
    planned = copy.deepcopy(tiny.model)
    plan = attach_export_rule(planned, tiny.tokenizer, floor_budget_bits=4.6, **kwargs)
    assert plan.floors and len(plan.floors) < len(fake_quant_layers(planned))  # some layers, not all
    other = copy.deepcopy(tiny.model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(3.0)  # a different model would plan differently
    assert attach_export_rule(other, tiny.tokenizer, **kwargs).floors != plan.floors
    set_precision(other, 3)  # as a model is left mid-training
    assert attach_export_rule(other, tiny.tokenizer, plan=plan, **kwargs) is plan
    floored = {n for n, m in fake_quant_layers(other).items() if m.min_bits is not None}
    assert floored == {n for n, m in fake_quant_layers(planned).items() if m.min_bits is not None}
    # statistics came from the float weights (precision reset), so the tables are those of a fresh attach
    fresh = copy.deepcopy(other)
    from otaro_export.train.fake_quant import detach_fake_quant

    detach_fake_quant(fresh)
    attach_export_rule(fresh, tiny.tokenizer, plan=plan, **kwargs)
    for name, layer in fake_quant_layers(other).items():
        assert torch.equal(layer.levels, fake_quant_layers(fresh)[name].levels), name
    assert attach_export_rule(other, tiny.tokenizer, **{**kwargs, "layer_floors": "none"}, plan=plan) is None
    assert all(m.min_bits is None for m in fake_quant_layers(other).values())


def test_a_tuned_runs_record_gives_the_floors_and_int8_activations_it_trained_with(tiny, chat_samples, tmp_path):
    from otaro_export.reconstruction import FloorPlan, export_units
    from otaro_export.train.checkpoint import CheckpointError, save_checkpoint
    from otaro_export.train.evaluation import tuned_rule

    weights = {"lm_head.weight": tiny.model.lm_head.weight.detach().clone()}

    def run(name, meta):
        save_checkpoint(tmp_path / name, 2, weights, {}, meta)
        return tmp_path / name

    units = [u.name for u in export_units(tiny.model, include_lm_head=False)]
    per_bits = {b: 6.125 for b in range(3, 9)}
    plan = FloorPlan(dict.fromkeys(units, 5), per_bits, per_bits, per_bits)
    config = {"layer_floors": "auto", "int8_activations": 4}
    rule = tuned_rule(run("auto", {"config": config, "floor_plan": plan.to_dict()}))
    assert (rule["layer_floors"], rule["plan"].floors, rule["int8_activations"]) == ("auto", plan.floors, 4)
    # the recorded floors are applied as they are (no new plan): every layer at least E5M5
    rows = evaluate_model(tiny.model, tiny.tokenizer, chat_samples, (3, 5), layer_floors="auto", plan=rule["plan"])
    by = {r.precision: r for r in rows}
    assert by["E5M3"].kl == by["E5M5"].kl and by["E5M3"].bits_per_weight == 6.125
    assert tuned_rule(run("none", {"config": {"layer_floors": "none", "int8_activations": 0}})) == {
        "layer_floors": "none",
        "plan": None,
        "int8_activations": 0,
    }
    assert tuned_rule(run("old", {"config": {"method": "bps"}})) == {}  # saved before the options existed
    rules = {"reconstruction": "center", "exponent_rule": "floor"}
    assert tuned_rule(run("rules", {"config": {"method": "bps", **rules}})) == rules
    with pytest.raises(CheckpointError, match="exponent_rule is unusable"):
        tuned_rule(run("bad_rule", {"config": {"exponent_rule": "nearest"}}))
    with pytest.raises(CheckpointError, match="floor plan is unreadable"):
        tuned_rule(run("broken", {"config": config, "floor_plan": {"floors": {}}}))
