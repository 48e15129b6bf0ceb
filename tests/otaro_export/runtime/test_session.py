"""The backend-independent Session logic, driven through the torch reference backend."""

import threading
import warnings

import numpy as np
import pytest
import torch

from otaro_export.convert import convert_model
from otaro_export.errors import (
    ArtifactError,
    InvalidBitsError,
    InvalidInputError,
    NonFiniteOutputError,
    OtaroError,
    OtaroWarning,
)
from otaro_export.runtime import load
from otaro_export.runtime.session import Session
from otaro_export.runtime.torch_session import TorchSession
from otaro_export.testing import tiny_causal_lm, tiny_executorch_artifact


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


def test_generation_respects_cache_capacity_and_reports_the_clamp(session):
    with pytest.warns(OtaroWarning, match="max_new_tokens 100 clamped to 5"):
        out = session.generate_ids(list(range(60)), 8, 100, stop_at_eos=False)
    assert len(out) == 5  # 64 positions: the prompt's 60, then 4 fed-back tokens; the 5th is never fed back
    assert session.last_stats.clamped_from == 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", OtaroWarning)  # a budget that fits is no warning
        assert len(session.generate_ids(list(range(60)), 8, 5, stop_at_eos=False)) == 5
    assert session.last_stats.clamped_from is None


@pytest.mark.parametrize(
    "bits", [2, 9, True, 3.0, "3", np.float32(3), np.array([3, 4]), torch.tensor(True), np.bool_(True)]
)
def test_bad_bits(session, bits):
    with pytest.raises(InvalidBitsError):
        session.forward(np.zeros((1, 3), dtype=np.int64), bits)


@pytest.mark.parametrize(
    "bits", [np.int64(3), np.uint8(3), np.int32(3), np.array(3), torch.tensor(3), torch.tensor([3], dtype=torch.int8)]
)
def test_any_integer_type_is_a_precision(session, bits):
    ids = np.arange(4, dtype=np.int64)[None]
    np.testing.assert_array_equal(session.forward(ids, bits), session.forward(ids, 3))
    assert session.generate_ids([1, 2], bits, np.int64(2), stop_at_eos=False) == session.generate_ids(
        [1, 2], 3, 2, stop_at_eos=False
    )


@pytest.mark.parametrize("n", [-1, 2.0, True, "3"])
def test_bad_max_new_tokens(session, n):
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        session.generate_ids([1, 2], 8, n)
    with pytest.raises(InvalidInputError, match="max_new_tokens"):
        session.generate("hi", 8, n)


def test_empty_and_over_long_prompts_are_input_errors(session):
    with pytest.raises(InvalidInputError, match="empty"):
        session.generate_ids([], 8, 3)
    with pytest.raises(InvalidInputError, match="empty"):
        session.generate("", 8, 3, chat=False)  # the byte tokenizer adds no special tokens: no ids at all
    with pytest.raises(InvalidInputError, match="exceed this artifact's context of 64"):
        session.generate("x" * 100, 8, 3, chat=False)


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


class _Damaged(Session):
    """Wraps a session's backend and alters its logits, to drive the output checks."""

    def __init__(self, base: Session, damage):
        super().__init__(base.directory, base.manifest, base.tokenizer)
        self._base, self._damage = base, damage

    @property
    def max_seq_len(self) -> int:
        return self._base.max_seq_len

    def _reset(self) -> None:
        self._base._reset()

    def _step(self, input_ids, start_pos, bits, last_only=False):
        return self._damage(self._base._step(input_ids, start_pos, bits, last_only=last_only))


def _with_nan(logits):
    logits = logits.copy()
    logits[0, -1, 7] = np.nan
    return logits


@pytest.mark.parametrize(
    "damage, error, match",
    [
        (_with_nan, NonFiniteOutputError, "NaN/Inf logits at E5M8"),
        (lambda x: x * np.inf, NonFiniteOutputError, "NaN/Inf"),
        (lambda x: x[..., :-1], ArtifactError, "logits of shape"),
        (lambda x: 1 / 0, ArtifactError, "ZeroDivisionError"),  # a backend's own exception becomes an ArtifactError
    ],
)
def test_step_output_is_checked(session, damage, error, match):
    scripted = _Damaged(session, damage)
    with pytest.raises(error, match=match):
        scripted.forward(np.arange(3, dtype=np.int64)[None], 8)
    with pytest.raises(error, match=match):
        scripted.generate_ids([1, 2, 3], 8, 4)


def test_callback_calling_back_into_the_session_is_an_error_not_a_corruption(session):
    def nested(_token):
        session.forward(np.arange(3, dtype=np.int64)[None], 3)

    with pytest.raises(OtaroError, match="callback must not call the same session"):
        session.generate_ids([1, 2, 3], 8, 4, on_token=nested)
    assert len(session.generate_ids([1, 2, 3], 8, 4, stop_at_eos=False)) == 4  # the lock was released


def test_last_stats_belong_to_the_calling_thread(session):
    seen = {}

    def run(n):
        session.generate_ids(list(range(1, 1 + n)), 8, 2, stop_at_eos=False)
        seen[n] = session.last_stats.prompt_tokens

    threads = [threading.Thread(target=run, args=(n,)) for n in (3, 7, 11)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {3: 3, 7: 7, 11: 11}


# -- one session, many threads, mixed precisions: every call gets its sequential answer -----------------------
PROMPTS = [[5, 17, 100, 3], [250, 9, 42, 7, 1]]


def _calls():
    """(kind, prompt, bits): forward, greedy ids and greedy text at E5M3 and E5M8 (12 calls)."""
    return [(kind, prompt, bits) for prompt in PROMPTS for bits in (3, 8) for kind in ("forward", "generate", "text")]


def _call(s, kind, prompt, bits):
    if kind == "forward":
        return s.forward(np.asarray([prompt], dtype=np.int64), bits)
    if kind == "generate":
        return s.generate_ids(prompt, bits, 4, stop_at_eos=False)
    return s.generate(s.tokenizer.decode(prompt), bits, 4, chat=False)


def _check_threads_match_sequential(s, threads: int = 4):
    """Thread 0 runs every call, each other thread every ``threads``-th: all at once, on one session."""
    calls = _calls()
    expected = [_call(s, *c) for c in calls]
    results: dict[tuple[int, int], object] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def worker(w: int):
        try:
            barrier.wait()
            for i, c in enumerate(calls):
                if w == 0 or i % threads == w:
                    results[(w, i)] = _call(s, *c)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors
    assert len(results) > len(calls)
    for (_w, i), got in results.items():
        if isinstance(expected[i], np.ndarray):
            np.testing.assert_array_equal(got, expected[i])  # same program, same inputs: bit-identical
        else:
            assert got == expected[i]


def test_threads_share_one_torch_session(session):
    _check_threads_match_sequential(session)


def test_threads_share_one_onnx_session(tiny_onnx):
    directory, _ = tiny_onnx("llama")
    _check_threads_match_sequential(load(directory))


def test_threads_share_one_executorch_session(tmp_path_factory):
    # the same root as test_executorch_session.py's exports: one export per pytest run
    directory, _ = tiny_executorch_artifact(tmp_path_factory.getbasetemp() / "tiny-executorch")
    _check_threads_match_sequential(load(directory))
