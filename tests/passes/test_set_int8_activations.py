"""``set_int8_activations``: every sefp_linear node carries ``act_int8_max_bits``; a call at an effective precision
(after its layer's floor) up to it quantizes its input (docs/FORMAT.md §9), the others are unchanged."""

import copy

import pytest
import torch

from otaro_export import activation_quant
from otaro_export.passes import SEFPLayerSpec, lower_to_sefp
from otaro_export.passes.set_int8_activations import set_int8_activations

SEFP = torch.ops.otaro.sefp_linear.default
FLOORED = {"model.layers.0.mlp.down_proj": 5}


def _act(node) -> int:
    return node.args[9] if len(node.args) > 9 else node.kwargs.get("act_int8_max_bits", 0)


def _lowered(float_ep, names):
    specs = {name: SEFPLayerSpec(min_bits=FLOORED.get(name, 3)) for name in names}
    ep, _ = lower_to_sefp(copy.deepcopy(float_ep), specs)
    return ep


def _reference(converted, ids, k, max_bits):
    """The converted model at E5M``k`` (floored layers at their floor), inputs fq'd where the effective
    precision is <= max_bits."""
    ref = copy.deepcopy(converted)
    for name, layer in ref.named_modules():
        if hasattr(layer, "set_bits"):
            effective = max(k, FLOORED.get(name, k))
            layer.set_bits(effective)
            if activation_quant.applies(effective, max_bits):
                layer.register_forward_pre_hook(lambda _m, args: (activation_quant.fake_quantize(args[0]),))
    with torch.no_grad():
        return ref(input_ids=ids, use_cache=False).logits


def test_every_linear_gets_the_setting_and_floors_decide_where_it_applies(float_ep, ids, tiny):
    _, converted, names = tiny
    ep, count = set_int8_activations(_lowered(float_ep, names), 4)
    nodes = [n for n in ep.graph.nodes if n.target == SEFP]
    assert count == len(nodes) == len(names) and {_act(n) for n in nodes} == {4}
    for k in (3, 4, 5):
        got = ep.module()(ids, torch.tensor(k))
        # the same torch ops in the same order on both sides (fq included): float32 noise only
        torch.testing.assert_close(got, _reference(converted, ids, k, 4), rtol=0, atol=1e-4)
    # the setting changes E5M3 (so the check above can fail), and the floored layer stayed float there
    float_3 = _reference(converted, ids, 3, 0)
    assert (ep.module()(ids, torch.tensor(3)) - float_3).abs().max() > 1e-3


def test_zero_leaves_the_nodes_as_lowered(float_ep, ids, tiny):
    lowered = _lowered(float_ep, tiny[2])
    ep, _ = set_int8_activations(copy.deepcopy(lowered), 0)
    assert all(_act(n) == 0 and len(n.args) <= 9 for n in ep.graph.nodes if n.target == SEFP)
    assert torch.equal(ep.module()(ids, torch.tensor(3)), lowered.module()(ids, torch.tensor(3)))
    # set twice: the last value wins, 0 included
    again, _ = set_int8_activations(set_int8_activations(copy.deepcopy(lowered), 4)[0], 0)
    assert all(_act(n) == 0 for n in again.graph.nodes if n.target == SEFP)


@pytest.mark.parametrize("bad", [2, 9, -1])
def test_bad_setting_is_refused(float_ep, tiny, bad):
    with pytest.raises(ValueError, match="max_bits must be 0"):
        set_int8_activations(_lowered(float_ep, tiny[2][:1]), bad)
