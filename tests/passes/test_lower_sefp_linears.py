import logging

import pytest
import torch

from otaro_export.convert import dequantized_copy
from otaro_export.passes.freeze_sefp_weights import FreezeResult, freeze_sefp_weights
from otaro_export.passes.lower_sefp_linears import lower_sefp_linears

SEFP = torch.ops.otaro.sefp_linear.default


def _count(ep, target):
    return sum(1 for n in ep.graph.nodes if n.target == target)


def test_linears_become_sefp_nodes_running_at_e5m8(tiny, float_ep, ids):
    model, converted, names = tiny
    ep = float_ep
    linears_before = _count(ep, torch.ops.aten.linear.default)
    ep, frozen = freeze_sefp_weights(ep, names)
    ep, result = lower_sefp_linears(ep, frozen)
    assert sorted(result.lowered) == sorted(names)
    assert _count(ep, SEFP) == len(names)
    # the tied lm_head stays a float linear (not selected)
    assert _count(ep, torch.ops.aten.linear.default) == linears_before - len(names)
    # until bits is threaded the nodes read a shared E5M8 constant: the program equals the M8 reference
    ref = dequantized_copy(converted, 8)(input_ids=ids, use_cache=False).logits
    torch.testing.assert_close(ep.module()(ids, torch.tensor(8)), ref, rtol=0, atol=1e-5)


def test_frozen_layer_without_linear_is_an_error(tiny, float_ep):
    model, _, names = tiny
    ep = float_ep
    ep = ep.run_decompositions()  # linear -> permute + addmm/mm: nothing left to match
    ep, frozen = freeze_sefp_weights(ep, names[:1])
    with pytest.raises(RuntimeError, match="have no aten.linear node"):
        lower_sefp_linears(ep, frozen)


def test_nothing_frozen_says_so(tiny, float_ep, caplog):
    model, _, _ = tiny
    with caplog.at_level(logging.WARNING):
        _, result = lower_sefp_linears(float_ep, FreezeResult())
    assert result.count == 0 and "nothing to lower" in caplog.text
