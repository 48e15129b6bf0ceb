"""The bench's artifact cache (otaro_export/bench/artifacts.py)."""

import json

from otaro_export.bench.artifacts import is_complete
from otaro_export.export.sefp_recipe import default_recipe


def test_a_cached_artifact_of_another_recipe_is_exported_again(tmp_path):
    """A default that changed since the cached export (e.g. int8 activations) must not be measured stale."""
    current = default_recipe().for_target("onnx").manifest_fields()
    manifest = {"target": "onnx", "inputs": ["input_ids"], "extra": {"sefp_recipe": current}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_complete(tmp_path)
    manifest["extra"]["sefp_recipe"] = {**current, "int8_activations": 0}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not is_complete(tmp_path)
    manifest["extra"] = {"weights": "fp32"}  # a float baseline records no recipe: nothing to compare
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_complete(tmp_path)
