"""``apply_precision_floors``: a floored layer reads ``max(bits, floor)``, the others ``bits``."""

import copy

import torch

from otaro_export.convert import dequantized_copy
from otaro_export.passes import SEFPLayerSpec, lower_to_sefp

SEFP = torch.ops.otaro.sefp_linear.default
CLAMP = torch.ops.aten.clamp_min.default


def test_floored_layers_run_at_their_floor(float_ep, ids, tiny):
    model, converted, names = tiny
    floored = {"model.layers.0.mlp.down_proj": 6, "model.layers.1.self_attn.v_proj": 5}
    specs = {name: SEFPLayerSpec(min_bits=floored.get(name, 3)) for name in names}
    ep, report = lower_to_sefp(float_ep, specs)
    assert report.floors == floored
    clamps = [n for n in ep.graph.nodes if n.target == CLAMP]
    assert sorted(n.args[1] for n in clamps) == [5, 6]  # one clamp per distinct floor, shared
    bits = next(n for n in ep.graph.find_nodes(op="placeholder") if n.name == "bits")
    readers = {n.args[6] for n in ep.graph.nodes if n.target == SEFP}
    assert readers == {bits, *clamps}

    for k in (3, 5, 8):
        ref = copy.deepcopy(converted)
        for name, layer in ref.named_modules():
            if name in floored:
                layer.set_bits(max(k, floored[name]))
            elif hasattr(layer, "set_bits"):
                layer.set_bits(k)
        with torch.no_grad():
            expected = ref(input_ids=ids, use_cache=False).logits
            torch.testing.assert_close(ep.module()(ids, torch.tensor(k)), expected, rtol=0, atol=1e-4)
        if k == 8:  # above every floor the program is the plain E5M8 model
            plain = dequantized_copy(converted, 8)(input_ids=ids, use_cache=False).logits
            torch.testing.assert_close(ep.module()(ids, torch.tensor(8)), plain, rtol=0, atol=1e-4)


def test_no_floors_no_clamp(float_ep, tiny):
    ep, report = lower_to_sefp(float_ep, tiny[2])
    assert report.floors == {} and not any(n.target == CLAMP for n in ep.graph.nodes)
