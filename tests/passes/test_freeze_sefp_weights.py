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


def test_a_layer_spec_brings_its_own_encoder_and_table(float_ep, ids, tiny):
    """The encoder's SEFPWeight is what gets packed; its levels table becomes one more constant the node reads."""
    from otaro_export.passes import SEFPLayerSpec, lower_to_sefp
    from otaro_export.sefp import center_levels, quantize

    model, _, names = tiny
    calls = []

    def encode(weight, name):
        calls.append(name)
        return quantize(weight, name=name), center_levels()

    ep, _ = lower_to_sefp(float_ep, {name: SEFPLayerSpec(encode=encode) for name in names})
    assert calls == [f"{n}.weight" for n in names]
    nodes = [n for n in ep.graph.nodes if n.target == torch.ops.otaro.sefp_linear.default]
    assert len(nodes) == len(names) and all(len(n.args) == 9 for n in nodes)
    assert {"model.layers.0.self_attn.q_proj.sefp_levels"} <= set(ep.constants)

    ref = model.__class__(model.config).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for name in names:
            layer = ref.get_submodule(name)
            layer.weight.copy_(quantize(layer.weight).dequantize(3, center_levels()))
        torch.testing.assert_close(ep.module()(ids, torch.tensor(3)), ref(ids).logits, rtol=0, atol=1e-4)
