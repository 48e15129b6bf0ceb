"""The backend-independent Session logic, driven through the torch reference backend."""

import numpy as np
import pytest
import torch

from otaro_export.convert import convert_model
from otaro_export.errors import InvalidBitsError, OtaroError
from otaro_export.runtime.torch_session import TorchSession
from otaro_export.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def session():
    loaded = tiny_causal_lm()
    convert_model(loaded.model)
    return TorchSession(loaded.model, loaded.tokenizer, max_seq_len=64)


def test_forward_shape_and_bits_change_logits(session):
    ids = np.arange(10, 20, dtype=np.int64)[None]
    a = session.forward(ids, 3)
    b = session.forward(ids, 8)
    assert a.shape == (1, 10, 259) and a.dtype == np.float32
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(session.forward(ids, 3), a)  # deterministic, fresh cache each call


def test_incremental_steps_equal_full_forward(session):
    ids = np.arange(30, 42, dtype=np.int64)[None]
    full = session.forward(ids, 5)
    session._reset()
    parts = [session._step(ids[:, :7], 0, 5)] + [session._step(ids[:, i : i + 1], i, 5) for i in range(7, 12)]
    # same float32 math, only the attention split differs: tiny accumulation-order differences
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-4, atol=1e-4)


def test_generate_ids_is_greedy_argmax_chain(session):
    prompt = [5, 6, 7, 8]
    out = session.generate_ids(prompt, 8, 6, stop_at_eos=False)
    assert len(out) == 6
    seq = list(prompt)
    for token in out:  # recompute each step without the cache
        assert token == int(np.argmax(session.forward(np.asarray([seq]), 8)[0, -1]))
        seq.append(token)
    stats = session.last_stats
    assert stats.prompt_tokens == 4 and stats.new_tokens == 6


def test_generate_text_streams_everything(session):
    chunks = []
    text = session.generate("hi", bits=4, max_new_tokens=8, on_text=chunks.append)
    assert "".join(chunks) == text


def test_generation_respects_cache_capacity(session):
    out = session.generate_ids(list(range(60)), 8, 100, stop_at_eos=False)
    assert len(out) == 4  # 64 positions in the cache


@pytest.mark.parametrize("bits", [2, 9])
def test_bad_bits(session, bits):
    with pytest.raises(InvalidBitsError):
        session.forward(np.zeros((1, 3), dtype=np.int64), bits)


@pytest.mark.parametrize(
    "ids,exc",
    [
        (np.zeros((2, 3), np.int64), ValueError),
        (np.zeros((1, 0), np.int64), ValueError),
        (np.zeros((1, 3), np.float32), TypeError),
        (np.full((1, 3), 999), ValueError),
        (np.zeros((1, 65), np.int64), ValueError),
    ],
)
def test_bad_input_ids(session, ids, exc):
    with pytest.raises(exc):
        session.forward(ids, 8)


def test_torch_tensor_input_ids_accepted(session):
    assert session.forward(torch.tensor([[1, 2, 3]]), 8).shape == (1, 3, 259)


def test_needs_converted_model():
    with pytest.raises(ValueError, match="convert_model"):
        TorchSession(tiny_causal_lm().model)


def test_artifact_precisions_are_enforced(session):
    session.manifest.precisions = [3, 8]
    try:
        with pytest.raises(OtaroError, match="serves precisions"):
            session.forward(np.zeros((1, 2), np.int64), 5)
    finally:
        session.manifest.precisions = [3, 4, 5, 6, 7, 8]
