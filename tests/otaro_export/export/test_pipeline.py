"""ExportOptions.validate: bad option values are clear errors before any work."""

from dataclasses import replace

import pytest
import torch

from otaro_export.errors import OtaroError
from otaro_export.export.pipeline import ExportOptions


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(target="executorch", attention="sdpa"), r"unknown --attention 'sdpa'; choose llm-ops .* or portable"),
        (dict(target="onnx", attention="portable"), r"--attention applies to --target executorch only"),
    ],
)
def test_bad_attention_is_a_clear_error(options, message):
    with pytest.raises(OtaroError, match=message):
        ExportOptions(**options).validate()


def test_attention_values_that_validate():
    for attention in (None, "llm-ops", "portable"):
        ExportOptions(target="executorch", attention=attention).validate()
    ExportOptions(target="onnx").validate()


def test_an_export_of_a_tuned_run_uses_its_rules_floors_and_int8_activations_and_says_so(tmp_path, monkeypatch):
    """The recipe the writer gets (layer_specs turns its floors into min_bits: test_sefp_recipe) and the manifest."""
    import onnx

    from otaro_export.export import onnx_export
    from otaro_export.export.model_info import model_info
    from otaro_export.export.pipeline import export_model
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.manifest import Manifest
    from otaro_export.reconstruction import FloorPlan
    from otaro_export.testing import tiny_causal_lm
    from otaro_export.train.checkpoint import save_checkpoint

    loaded = tiny_causal_lm()
    floors = {"model.layers.1.mlp.down_proj": 6}
    plan = FloorPlan(floors, {3: 4.4}, {3: 1.0}, {3: 0.1})
    config = {"reconstruction": "center", "exponent_rule": "floor", "layer_floors": "auto", "int8_activations": 3}
    meta = {"config": config, "floor_plan": plan.to_dict()}
    tuned = "model.layers.1.mlp.down_proj.weight"
    weight = loaded.model.get_parameter(tuned).detach() * 2
    save_checkpoint(tmp_path / "run", 40, {tuned: weight}, {"step": 40}, meta)
    seen = {}

    def writer(loaded, options, out, log):
        seen["recipe"], seen["weight"] = options.recipe, loaded.model.get_parameter(tuned).detach().clone()
        onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(out / "model.onnx"))
        extra = {"sefp_recipe": options.recipe.manifest_fields()}
        info = model_info(loaded.model, loaded.source, options.max_seq_len)
        return Manifest("onnx", "model.onnx", "fused", "onnxruntime", [], [], [], info, extra=extra)

    monkeypatch.setattr(onnx_export, "export_onnx", writer)
    notes = []
    options = ExportOptions(
        target="onnx", output=tmp_path / "out", checkpoint=tmp_path / "run", recipe=default_recipe()
    )
    export_model(options, log=notes.append, loaded=loaded)
    recipe = seen["recipe"]
    assert (recipe.reconstruction, recipe.exponent_rule) == ("center", "floor")  # not the defaults fitted / search
    assert (recipe.layer_floors, recipe.floors, recipe.int8_activations) == ("auto", floors, 3)
    assert torch.equal(seen["weight"], weight)
    manifest = Manifest.load(tmp_path / "out")
    got = manifest.extra["sefp_recipe"]
    assert (got["reconstruction"], got["exponent_rule"], got["int8_activations"]) == ("center", "floor", 3)
    taken = ["reconstruction", "exponent_rule", "layer_floors", "int8_activations"]
    want = {"checkpoint": "ckpt-000040", "step": 40, "from_run": taken}
    assert manifest.extra["tuned_run"] == want
    assert sum("as the run was tuned" in n for n in notes) == 4
    assert "reconstruction: center, as the run was tuned" in notes and "exponents: floor, as the run was tuned" in notes

    # explicit options win, and the manifest lists only what came from the run
    chosen = default_recipe(reconstruction="fitted", exponent_rule="search", layer_floors="none", int8_activations=0)
    export_model(replace(options, recipe=chosen, output=tmp_path / "out2"), log=notes.append, loaded=loaded)
    recipe = seen["recipe"]
    assert (recipe.reconstruction, recipe.exponent_rule) == ("fitted", "search")
    assert (recipe.layer_floors, recipe.floors, recipe.int8_activations) == ("none", None, 0)
    assert Manifest.load(tmp_path / "out2").extra["tuned_run"]["from_run"] == []
