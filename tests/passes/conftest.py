"""Shared fixtures for the pass tests: tiny HF models exported the way the exporters do."""

import copy
import warnings

import pytest
import torch

from otaro_export.convert import convert_model, select_sefp_linears
from otaro_export.testing import tiny_causal_lm

SEQ = 6


class LogitsWrapper(torch.nn.Module):
    """forward(input_ids[, bits]) -> logits; ``bits`` is unused by the float graph."""

    def __init__(self, model, with_bits=True):
        super().__init__()
        self.model = model
        self.with_bits = with_bits

    def forward(self, input_ids, bits=None):
        return self.model(input_ids=input_ids, use_cache=False).logits


def export_logits(model, with_bits=True):
    seq = torch.export.Dim("seq", min=2, max=64)
    ids = torch.ones(1, SEQ, dtype=torch.long)
    if with_bits:
        return torch.export.export(LogitsWrapper(model), (ids, torch.tensor(8)), dynamic_shapes=({1: seq}, None))
    return torch.export.export(LogitsWrapper(model, False), (ids,), dynamic_shapes=({1: seq},))


@pytest.fixture(scope="session")
def tiny():
    """(float model, converted SEFP copy, layer FQNs) for a tiny random Llama. Do not mutate."""
    model = tiny_causal_lm("llama").model
    converted = copy.deepcopy(model)
    convert_model(converted)
    return model, converted, select_sefp_linears(model)


@pytest.fixture(scope="session")
def _float_ep(tiny):
    return export_logits(tiny[0])


@pytest.fixture
def float_ep(_float_ep):
    """A fresh copy of the tiny Llama exported with a (float-unused) ``bits`` input (exporting is slow)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation inside deepcopy
        return copy.deepcopy(_float_ep)


@pytest.fixture
def ids():
    return torch.randint(0, 259, (1, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.fixture
def exporter():
    return export_logits
