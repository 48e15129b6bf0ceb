import logging

import torch

from otaro_export.passes import program_utils as pu
from otaro_export.passes.drop_unused_inputs import drop_unused_inputs
from otaro_export.passes.freeze_sefp_weights import freeze_sefp_weights
from otaro_export.passes.lower_sefp_linears import lower_sefp_linears


def test_float_weights_of_lowered_layers_are_dropped(tiny, float_ep, ids):
    _, _, names = tiny
    ep, frozen = freeze_sefp_weights(float_ep, names)
    ep, _ = lower_sefp_linears(ep, frozen)
    expected = ep.module()(ids, torch.tensor(8))
    weights = {f"model.{n}.weight" for n in names}
    ep, result = drop_unused_inputs(ep, weights)
    assert set(result.dropped) == weights
    stored = set(ep.state_dict) | set(ep.constants)
    assert not weights & stored
    assert "otaro_default_bits" in stored  # not a candidate: kept although still read
    torch.testing.assert_close(ep.module()(ids, torch.tensor(8)), expected, rtol=0, atol=0)


def test_without_targets_drops_every_unused_input_but_keeps_used_ones(float_ep):
    used_before = {pu.input_spec(float_ep, n).target for n in pu.placeholders(float_ep) if n.users} - {None}
    ep, result = drop_unused_inputs(float_ep)
    remaining = {s.target for s in ep.graph_signature.input_specs if s.target}
    assert used_before <= remaining and result.count > 0 and not set(result.dropped) & remaining


def test_nothing_unused_says_so(float_ep, caplog):
    ep, _ = drop_unused_inputs(float_ep)
    with caplog.at_level(logging.WARNING):
        _, result = drop_unused_inputs(ep)
    assert result.count == 0 and "nothing to drop" in caplog.text
