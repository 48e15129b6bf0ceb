import logging

import pytest
import torch

from otaro_export.errors import NonFiniteWeightError
from otaro_export.packing import pack
from otaro_export.passes.freeze_sefp_weights import LayerNotFoundError, freeze_sefp_weights
from otaro_export.sefp import quantize


def test_planes_are_the_packed_quantized_weight(tiny, float_ep):
    model, _, names = tiny
    ep = float_ep  # a wrapper: inputs are named model.<layer>.weight
    ep, result = freeze_sefp_weights(ep, names)
    assert result.count == len(names)
    sig = ep.graph_signature
    for layer in result.layers.values():
        want = pack(quantize(model.get_submodule(layer.name).weight.detach(), layer.name))
        for key, node in layer.planes.items():
            stored = ep.constants[sig.inputs_to_lifted_tensor_constants[node.name]]
            assert torch.equal(stored, getattr(want, key)), (layer.name, key)
    ep.validate()


def test_unknown_layer_is_named(tiny, float_ep):
    model, _, _ = tiny
    with pytest.raises(LayerNotFoundError, match="model.layers.9.mlp.up_proj"):
        freeze_sefp_weights(float_ep, ["model.layers.9.mlp.up_proj"])


def test_non_finite_weight_error_names_the_layer(tiny, float_ep):
    _, _, names = tiny
    with torch.no_grad():
        float_ep.state_dict[f"model.{names[3]}.weight"][0, 0] = float("nan")  # float_ep is a private copy
    with pytest.raises(NonFiniteWeightError, match=names[3]):
        freeze_sefp_weights(float_ep, names)


def test_no_layers_says_so(tiny, float_ep, caplog):
    model, _, _ = tiny
    with caplog.at_level(logging.WARNING):
        _, result = freeze_sefp_weights(float_ep, [])
    assert result.count == 0 and "nothing to freeze" in caplog.text
