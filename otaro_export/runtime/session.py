"""Backend-independent runtime session: validation, greedy generation with a KV cache.

Backends (ONNX Runtime, ExecuTorch) implement three methods:

* ``_reset()``: forget the KV cache;
* ``_step(input_ids, start_pos, bits) -> logits``: run ``input_ids`` (int64
  ``[1, s]``) at positions ``start_pos .. start_pos+s-1`` against the cache,
  append their K/V, return float32 logits ``[1, s, V]``;
* ``max_seq_len``: how many positions the cache holds.

Precision is a per-call input of the one loaded program: switching ``bits``
between calls reloads nothing.

Threads: a session holds ONE conversation state (the KV cache), so every public
call (``forward``, ``generate_ids``, ``generate``, ``encode_prompt``) runs
under the session's lock: threads sharing a session at different precisions
each get exactly their sequential result, one call at a time (for parallel
decoding, load one session per thread). A callback (``on_token``,
``on_text``) that calls back into the same session would clobber the cache
mid-generation, so that is an error, not a deadlock.

Every step's logits are checked: the wrong shape or a NaN/Inf is an
:class:`ArtifactError`, never an answer.
"""

from __future__ import annotations

import operator
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otaro_export.errors import (
    ArtifactError,
    InvalidBitsError,
    InvalidInputError,
    NonFiniteOutputError,
    OtaroError,
    OtaroWarning,
)
from otaro_export.manifest import Manifest
from otaro_export.sefp import check_bits


def as_int(value, name: str, error: type[Exception] = InvalidInputError) -> int:
    """Any integer scalar (int, numpy integer, 0-dim integer array or tensor) as an int; bools are rejected."""
    if isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be an integer, got the bool {value!r}")
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy array or torch tensor
        kind = str(value.dtype)
        if tuple(value.shape) not in ((), (1,)) or "int" not in kind:
            raise error(f"{name} must be one integer, got a {kind} array of shape {tuple(value.shape)}")
        value = value.item()
    try:
        return operator.index(value)
    except TypeError:
        raise error(f"{name} must be an integer, got {value!r}") from None


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    #: max_new_tokens as asked, when the context could not hold that many (else None)
    clamped_from: int | None = None

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(self.new_tokens - 1, 0)  # the first new token comes from prefill
        return steps / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0


class Session(ABC):
    """One loaded artifact. Use :func:`otaro_export.runtime.load` to make one."""

    def __init__(self, directory: Path, manifest: Manifest, tokenizer=None):
        self.directory = Path(directory)
        self.manifest = manifest
        self.tokenizer = tokenizer
        self._lock = threading.Lock()
        self._holder: int | None = None  # thread id inside a public call
        self._local = threading.local()
        self._latest_stats = GenerationStats()

    @property
    def last_stats(self) -> GenerationStats:
        """Stats of this thread's last generation on this session (else the session's latest)."""
        return getattr(self._local, "stats", None) or self._latest_stats

    @last_stats.setter
    def last_stats(self, stats: GenerationStats) -> None:
        self._local.stats = stats
        self._latest_stats = stats

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One public call at a time: the KV cache is the session's one conversation."""
        me = threading.get_ident()
        if self._holder == me:
            raise OtaroError(
                "this session is already running a call in this thread: an on_token/on_text callback must not "
                "call the same session (it would overwrite the KV cache mid-generation); load a second session"
            )
        with self._lock:
            self._holder = me
            try:
                yield
            finally:
                self._holder = None

    # -- backend interface -------------------------------------------------
    @property
    @abstractmethod
    def max_seq_len(self) -> int: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        """Logits of every position, or with ``last_only`` of the last one (a backend may return all)."""

    # -- public API ----------------------------------------------------------
    @property
    def precisions(self) -> list[int]:
        return list(self.manifest.precisions)

    def check_bits(self, bits: int) -> int:
        bits = check_bits(as_int(bits, "bits", InvalidBitsError))
        if bits not in self.precisions:
            raise OtaroError(f"this artifact serves precisions {self.precisions}, not {bits}")
        return bits

    def _check_ids(self, input_ids) -> np.ndarray:
        ids = np.asarray(input_ids.numpy() if hasattr(input_ids, "numpy") else input_ids)
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            raise InvalidInputError(f"input_ids must be [1, S] with S >= 1, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must be integers, got {ids.dtype}")
        vocab = self.manifest.model.get("vocab_size")
        if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
            raise InvalidInputError(f"input_ids must be in [0, {vocab}), got values {ids.min()}..{ids.max()}")
        if ids.shape[1] > self.max_seq_len:
            raise InvalidInputError(
                f"{ids.shape[1]} tokens exceed this artifact's context of {self.max_seq_len} (max_seq_len): "
                "shorten the prompt, or re-export with a larger --max-seq-len"
            )
        return ids.astype(np.int64)

    def _run_step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        """``_step`` with its failures as ArtifactErrors and its logits checked (shape, finite).

        ``last_only``: only the last position's logits are needed (generation), ``[1, 1, V]``.
        """
        try:
            logits = self._step(input_ids, start_pos, bits, last_only=last_only)
        except OtaroError:
            raise
        except Exception as exc:  # a runtime's own error (onnxruntime's Fail, ExecuTorch's RuntimeError...)
            raise ArtifactError(
                f"running {self.directory / self.manifest.artifact} at E5M{bits} failed ({type(exc).__name__}: {exc})"
            ) from exc
        rows = 1 if last_only else input_ids.shape[1]
        if last_only and getattr(logits, "ndim", 0) == 3 and logits.shape[1] == input_ids.shape[1]:
            logits = logits[:, -1:]
        expected = (1, rows, self.manifest.model.get("vocab_size"))
        shape = tuple(getattr(logits, "shape", ()))
        if shape != expected and not (expected[2] is None and shape[:2] == expected[:2]):
            raise ArtifactError(
                f"{self.directory / self.manifest.artifact} returned logits of shape {shape}, expected {expected} "
                "(manifest.json and the model disagree): re-export the artifact"
            )
        if not np.isfinite(logits).all():
            raise NonFiniteOutputError(
                f"{self.directory / self.manifest.artifact} produced NaN/Inf logits at E5M{bits}: the artifact is "
                "probably damaged (check it with `otaro verify`) or a kernel is broken"
            )
        return logits

    def forward(self, input_ids, bits: int) -> np.ndarray:
        """Full-sequence logits, float32 ``[1, S, V]``, from a fresh cache."""
        bits = self.check_bits(bits)
        ids = self._check_ids(input_ids)
        with self._exclusive():
            self._reset()
            return self._run_step(ids, 0, bits)

    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        with self._exclusive():
            return self._encode_prompt(prompt, chat)

    def _encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a string, got {type(prompt).__name__}")
        if self.tokenizer is None:
            raise OtaroError(f"no tokenizer beside {self.directory}; pass token ids to forward() instead")
        if chat and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return list(self.tokenizer(prompt)["input_ids"])

    def eos_token_ids(self) -> set[int]:
        ids = self.manifest.model.get("eos_token_ids") or []
        if not ids and self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids = [self.tokenizer.eos_token_id]
        return set(int(i) for i in ids)

    def generate_ids(
        self,
        prompt_ids: list[int],
        bits: int,
        max_new_tokens: int,
        on_token: Callable[[int], None] | None = None,
        stop_at_eos: bool = True,
    ) -> list[int]:
        """Greedy decoding with the KV cache: one prefill, then one step per token.

        ``max_new_tokens`` beyond what the context holds is clamped with an
        :class:`OtaroWarning` (and ``last_stats.clamped_from`` set).
        """
        bits = self.check_bits(bits)
        max_new_tokens = as_int(max_new_tokens, "max_new_tokens")
        if max_new_tokens < 0:
            raise InvalidInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        if len(prompt_ids) == 0:
            raise InvalidInputError("the prompt is empty (no tokens): give at least one token")
        ids = self._check_ids(np.asarray([prompt_ids], dtype=np.int64))
        with self._exclusive():
            return self._generate_ids(ids, bits, max_new_tokens, on_token, stop_at_eos)

    def _generate_ids(self, ids: np.ndarray, bits: int, max_new_tokens: int, on_token, stop_at_eos: bool):
        # The last new token is never fed back, so a prompt of S tokens leaves room for max_seq_len - S + 1.
        budget = self.max_seq_len - ids.shape[1] + 1
        stats = GenerationStats(prompt_tokens=ids.shape[1])
        if max_new_tokens > budget:
            stats.clamped_from = max_new_tokens
            warnings.warn(
                f"max_new_tokens {max_new_tokens} clamped to {budget}: the prompt's {ids.shape[1]} tokens leave "
                f"room for {budget} in this artifact's context of {self.max_seq_len} (--max-seq-len at export)",
                OtaroWarning,
                stacklevel=4,
            )
            max_new_tokens = budget
        eos = self.eos_token_ids() if stop_at_eos else set()
        out: list[int] = []
        self._reset()
        if max_new_tokens == 0:
            self.last_stats = stats
            return out
        t0 = time.perf_counter()
        logits = self._run_step(ids, 0, bits, last_only=True)
        stats.prefill_s = time.perf_counter() - t0
        pos = ids.shape[1]
        t1 = time.perf_counter()
        while True:
            token = int(np.argmax(logits[0, -1]))
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in eos or len(out) >= max_new_tokens:
                break
            logits = self._run_step(np.asarray([[token]], dtype=np.int64), pos, bits, last_only=True)
            pos += 1
        stats.decode_s = time.perf_counter() - t1
        stats.new_tokens = len(out)
        self.last_stats = stats
        return out

    def generate(
        self,
        prompt: str,
        bits: int,
        max_new_tokens: int = 64,
        *,
        chat: bool = True,
        on_text: Callable[[str], None] | None = None,
    ) -> str:
        """Greedy text continuation of ``prompt`` at precision E5M``bits`` (KV cache)."""
        bits = self.check_bits(bits)
        max_new_tokens = as_int(max_new_tokens, "max_new_tokens")
        if max_new_tokens < 0:
            raise InvalidInputError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
        with self._exclusive():
            prompt_ids = self._encode_prompt(prompt, chat=chat)
            if not prompt_ids:
                raise InvalidInputError("the prompt is empty: it encodes to no tokens")
            return self._generate_text(self._check_ids(np.asarray([prompt_ids])), bits, max_new_tokens, on_text)

    def _generate_text(self, ids: np.ndarray, bits: int, max_new_tokens: int, on_text) -> str:
        eos = self.eos_token_ids()
        emitted = ""
        tokens: list[int] = []

        def stream(token: int) -> None:
            nonlocal emitted
            tokens.append(token)
            text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
            if on_text is not None and len(text) > len(emitted) and not text.endswith("\ufffd"):
                on_text(text[len(emitted) :])
                emitted = text

        self._generate_ids(ids, bits, max_new_tokens, stream, stop_at_eos=True)
        text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        if on_text is not None and len(text) > len(emitted):
            on_text(text[len(emitted) :])
        return text
