import pytest
import torch

from otaro_export.errors import OtaroError
from otaro_export.export.llm_decoder import ExportDecoder
from otaro_export.export.sefp_recipe import (
    SEFPRecipe,
    _EncodingMemo,
    default_recipe,
    layer_specs,
    lower_exported_decoder,
)
from otaro_export.testing import tiny_causal_lm


def test_default_recipe_is_the_measured_choice_and_takes_overrides():
    recipe = default_recipe()
    assert (recipe.reconstruction, recipe.exponent_rule, recipe.lm_head, recipe.layer_floors) == (
        "fitted",
        "search",
        "sefp",
        "auto",
    )
    assert recipe.needs_statistics
    paper = default_recipe(reconstruction="floor", exponent_rule="floor", layer_floors="none", lm_head=None)
    assert (paper.reconstruction, paper.lm_head, paper.needs_statistics) == ("floor", "sefp", False)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("reconstruction", "nearest", "nearest"),
        ("lm_head", "int8", "--lm-head"),
        ("layer_floors", "some", "--layer-floors"),
        ("lm_head_min_bits", 9, "--lm-head-min-bits"),
        ("int8_activations", 2, "--int8-activations"),
        ("int8_activations", 9, "--int8-activations"),
    ],
)
def test_a_bad_choice_is_one_clear_error(field, value, message):
    recipe = SEFPRecipe(**{field: value})
    with pytest.raises(OtaroError, match=message):
        recipe.validate()


def test_int8_activations_resolve_per_target():
    recipe = default_recipe()
    assert recipe.int8_activations is None  # the target's default
    assert recipe.for_target("onnx").int8_activations == 5
    assert recipe.for_target("executorch").int8_activations == 5  # the same default on both targets
    assert default_recipe(int8_activations=3).for_target("onnx").int8_activations == 3
    assert default_recipe(int8_activations=3).for_target("executorch").int8_activations == 3
    assert default_recipe(int8_activations=0).for_target("executorch").int8_activations == 0
    assert recipe.for_target("onnx").manifest_fields()["int8_activations"] == 5
    assert SEFPRecipe().int8_activations == 0  # the paper's recipe: float activations


def test_the_memo_rounds_fitted_levels_to_integers_only_with_int8_activations():
    from otaro_export import activation_quant

    weight = torch.randn(16, 128)
    for value, integer in ((4, True), (0, False)):
        _, levels = _EncodingMemo(SEFPRecipe(reconstruction="fitted", int8_activations=value))("l", weight, None)
        assert activation_quant.int8_grid_levels(levels, 3) == integer
        assert activation_quant.int8_grid_levels(levels, 4) == integer


def test_the_memo_encodes_a_layer_once_for_the_floor_plan_and_the_lowering(monkeypatch):
    from otaro_export import reconstruction

    calls = []
    real = reconstruction.quantize_layer

    def counting(weight, *args, **kwargs):
        calls.append(tuple(weight.shape))
        return real(weight, *args, **kwargs)

    monkeypatch.setattr(reconstruction, "quantize_layer", counting)
    memo = _EncodingMemo(SEFPRecipe())
    weight = torch.randn(8, 64)
    first = memo("layer", weight, None)
    assert memo.encoder("layer", None)(weight, "layer.weight") is first  # the lowering reuses the plan's encoding
    assert calls == [(8, 64)] and "layer" not in memo.done  # and then the memo lets it go


def test_the_lowering_of_both_exporters_with_and_without_sefp_layers():
    loaded = tiny_causal_lm()
    decoder = ExportDecoder(loaded.model, 16)
    recipe = SEFPRecipe(lm_head="sefp")
    names = decoder.sefp_linear_names(include_lm_head=True)
    specs = layer_specs(loaded.model, loaded.tokenizer, names, recipe, log=lambda _: None)
    assert set(specs) == set(names) and all(spec.min_bits == 3 for spec in specs.values())

    ep, report = lower_exported_decoder(decoder.export(), loaded.model, loaded.tokenizer, names, recipe, lambda _: None)
    assert report.layers == names and report.floors == {}  # no floors above E5M3 in this recipe
    ops = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("sefp_linear" in op for op in ops) and any("sefp_embedding" in op for op in ops)

    float_ep, none = lower_exported_decoder(decoder.export(), loaded.model, loaded.tokenizer, [], recipe, print)
    assert none is None
    assert not any("sefp" in str(n.target) for n in float_ep.graph.nodes if n.op == "call_function")


def _tuned_meta(layer_floors="auto", int8=3, floors=None):
    from otaro_export.reconstruction import FloorPlan

    plan = FloorPlan(floors or {"model.layers.0.self_attn.qkv_proj": 5}, {3: 4.4}, {3: 10.0}, {3: 0.1})
    return {
        "step": 40,
        "config": {"layer_floors": layer_floors, "int8_activations": int8},
        "floor_plan": plan.to_dict() if layer_floors == "auto" else None,
    }


def test_a_tuned_run_gives_its_floors_and_int8_activations_unless_the_user_chose(capsys):
    notes = []
    recipe, taken = default_recipe().with_tuned_run(_tuned_meta(), notes.append)
    assert taken == ["layer_floors", "int8_activations"]
    assert (recipe.floors, recipe.int8_activations) == ({"model.layers.0.self_attn.qkv_proj": 5}, 3)
    assert "as the run was tuned" in notes[0]
    none, _ = default_recipe().with_tuned_run(_tuned_meta("none", 0), notes.append)
    assert (none.layer_floors, none.floors, none.for_target("onnx").int8_activations) == ("none", None, 0)
    # explicit export options win
    chosen, taken = default_recipe(layer_floors="auto", int8_activations=0).with_tuned_run(_tuned_meta(), print)
    assert (chosen.floors, chosen.int8_activations, taken) == (None, 0, [])
    # the ExecuTorch export runs the run's int8 activations too
    et, taken = default_recipe().with_tuned_run(_tuned_meta(), notes.append)
    assert et.for_target("executorch").int8_activations == 3 and "int8_activations" in taken
    # a run from before the options existed: the export's own defaults
    old, taken = default_recipe().with_tuned_run({"config": {"method": "bps"}}, print)
    assert (old.layer_floors, old.floors, old.int8_activations, taken) == ("auto", None, None, [])
    broken = {**_tuned_meta(), "floor_plan": {"floors": {"x": 2}}}
    with pytest.raises(OtaroError, match="floor plan is unreadable"):
        default_recipe().with_tuned_run(broken, print)


def test_a_tuned_runs_reconstruction_and_exponent_rule_are_the_exports_unless_the_user_chose():
    notes = []
    rules = {"reconstruction": "center", "exponent_rule": "floor"}
    meta = {"config": {**rules, "layer_floors": "none", "int8_activations": 0}}
    recipe, taken = default_recipe().with_tuned_run(meta, notes.append)
    assert (recipe.reconstruction, recipe.exponent_rule) == ("center", "floor")
    assert taken == ["reconstruction", "exponent_rule", "layer_floors", "int8_activations"]
    assert notes[:2] == ["reconstruction: center, as the run was tuned", "exponents: floor, as the run was tuned"]
    assert recipe.manifest_fields()["reconstruction"] == "center"
    # an explicit option wins over the run, the other setting still follows it
    chosen, taken = default_recipe(reconstruction="floor").with_tuned_run(meta, print)
    assert (chosen.reconstruction, chosen.exponent_rule) == ("floor", "floor") and "reconstruction" not in taken
    chosen, taken = default_recipe(exponent_rule="search").with_tuned_run(meta, print)
    assert (chosen.reconstruction, chosen.exponent_rule) == ("center", "search") and "exponent_rule" not in taken
    # a run saved before tune recorded its rules: the export's defaults
    old, taken = default_recipe().with_tuned_run({"config": {"layer_floors": "none"}}, print)
    assert (old.reconstruction, old.exponent_rule, taken) == ("fitted", "search", ["layer_floors"])
    with pytest.raises(OtaroError, match="checkpoint's reconstruction is unusable: unknown reconstruction rule 'odd'"):
        default_recipe().with_tuned_run({"config": {"reconstruction": "odd"}}, print)


def test_a_run_tuned_with_a_float_lm_head_exports_it_float_unless_the_user_chose():
    """tune --no-quantize-lm-head records quantize_lm_head false: eval measures a float lm_head, so the export's."""
    notes = []
    meta = {"config": {"quantize_lm_head": False}}
    recipe, taken = default_recipe().with_tuned_run(meta, notes.append)
    assert (recipe.lm_head, taken, notes) == ("float", ["lm_head"], ["lm_head: float, as the run was tuned"])
    assert recipe.manifest_fields()["lm_head"] == "float"
    quantized, taken = default_recipe().with_tuned_run({"config": {"quantize_lm_head": True}}, print)
    assert (quantized.lm_head, taken) == ("sefp", ["lm_head"])
    # an explicit --lm-head wins
    chosen, taken = default_recipe(lm_head="sefp").with_tuned_run(meta, print)
    assert (chosen.lm_head, taken) == ("sefp", [])
    # a run that recorded nothing keeps the default
    old, taken = default_recipe().with_tuned_run({"config": {"method": "bps"}}, print)
    assert (old.lm_head, taken) == ("sefp", [])
    with pytest.raises(OtaroError, match="checkpoint's quantize_lm_head is unusable: 'no' is not true/false"):
        default_recipe().with_tuned_run({"config": {"quantize_lm_head": "no"}}, print)


def test_given_floors_replace_the_plan(monkeypatch):
    from otaro_export.export import sefp_recipe

    def no_plan(*args, **kwargs):
        raise AssertionError("a recipe with given floors makes no floor plan")

    monkeypatch.setattr(sefp_recipe, "plan_layer_floors", no_plan)
    loaded = tiny_causal_lm()
    names = ExportDecoder(loaded.model, 16).sefp_linear_names(include_lm_head=False)
    floors = {"model.layers.1.mlp.down_proj": 6, "lm_head": 5}  # lm_head not exported here: ignored
    recipe = SEFPRecipe(layer_floors="auto", floors=floors)
    assert not recipe.needs_statistics
    specs = layer_specs(loaded.model, loaded.tokenizer, names, recipe, log=lambda _: None)
    assert {n: s.min_bits for n, s in specs.items() if s.min_bits > 3} == {"model.layers.1.mlp.down_proj": 6}
    with pytest.raises(OtaroError, match="layers this model does not have"):
        layer_specs(loaded.model, None, names, SEFPRecipe(floors={"model.layers.7.mlp.down_proj": 5}), print)
