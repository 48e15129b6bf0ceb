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
    assert recipe.for_target("onnx").int8_activations == 4
    assert recipe.for_target("executorch").int8_activations == 0
    assert default_recipe(int8_activations=3).for_target("onnx").int8_activations == 3
    assert default_recipe(int8_activations=0).for_target("executorch").int8_activations == 0
    with pytest.raises(OtaroError, match="executorch export has no int8-activation kernel"):
        default_recipe(int8_activations=4).for_target("executorch")
    assert recipe.for_target("onnx").manifest_fields()["int8_activations"] == 4
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
