import copy
import logging

import pytest
import torch

from otaro_export.convert import dequantized_copy, set_bits
from otaro_export.passes import program_utils as pu
from otaro_export.passes.thread_bits_input import thread_bits_input

SEFP = torch.ops.otaro.sefp_linear.default


def _bits_args(ep):
    return {n.args[6] for n in ep.graph.nodes if n.target == SEFP}


def test_per_layer_bits_buffers_are_rewired_to_one_added_input(tiny, exporter, ids):
    """A model exported with SEFPLinear modules as-is: each node reads its own ``bits`` buffer."""
    _, converted, names = tiny
    model = copy.deepcopy(converted)
    set_bits(model, 3)  # the buffers say E5M3; after threading only the input counts
    ep = exporter(model, with_bits=False)
    assert len(_bits_args(ep)) == len(names)
    ep, result = thread_bits_input(ep, "bits")
    assert result.added_input and result.count == len(names)
    assert _bits_args(ep) == {result.bits_node}
    assert [n.name for n in pu.user_input_nodes(ep)][-1] == "bits"
    module = ep.module()
    for k in (3, 6, 8):
        ref = dequantized_copy(converted, k)(input_ids=ids, use_cache=False).logits
        # ops on identical dequantized weights: only float summation order may differ
        torch.testing.assert_close(module(ids, torch.tensor(k)), ref, rtol=0, atol=1e-5)


def test_program_without_sefp_nodes_says_so(float_ep, caplog):
    with caplog.at_level(logging.WARNING):
        _, result = thread_bits_input(float_ep, "bits")
    assert result.count == 0 and not result.added_input and "nothing to thread" in caplog.text


def test_bits_input_of_wrong_type_is_rejected(tiny):
    class Wrapper(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, bits):
            return self.model(input_ids=input_ids, use_cache=False).logits

    ep = torch.export.export(Wrapper(tiny[0]), (torch.ones(1, 4, dtype=torch.long), torch.tensor(8.0)))
    with pytest.raises(TypeError, match="0-dim int64"):
        thread_bits_input(ep, "bits")
