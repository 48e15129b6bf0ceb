"""Backend-independent runtime session: validation, greedy generation with a KV cache.

Backends (ONNX Runtime, ExecuTorch) implement three methods:

* ``_reset()``: forget the KV cache;
* ``_step(input_ids, start_pos, bits) -> logits``: run ``input_ids`` (int64
  ``[1, s]``) at positions ``start_pos .. start_pos+s-1`` against the cache,
  append their K/V, return float32 logits ``[1, s, V]``;
* ``max_seq_len``: how many positions the cache holds.

Precision is a per-call input of the one loaded program: switching ``bits``
between calls reloads nothing.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from otaro_export.errors import OtaroError
from otaro_export.manifest import Manifest
from otaro_export.sefp import check_bits


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

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
        self.last_stats = GenerationStats()

    # -- backend interface -------------------------------------------------
    @property
    @abstractmethod
    def max_seq_len(self) -> int: ...

    @abstractmethod
    def _reset(self) -> None: ...

    @abstractmethod
    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int) -> np.ndarray: ...

    # -- public API ----------------------------------------------------------
    @property
    def precisions(self) -> list[int]:
        return list(self.manifest.precisions)

    def check_bits(self, bits: int) -> int:
        bits = check_bits(bits)
        if bits not in self.precisions:
            raise OtaroError(f"this artifact serves precisions {self.precisions}, not {bits}")
        return bits

    def _check_ids(self, input_ids) -> np.ndarray:
        ids = np.asarray(input_ids.numpy() if hasattr(input_ids, "numpy") else input_ids)
        if ids.ndim != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
            raise ValueError(f"input_ids must be [1, S] with S >= 1, got shape {ids.shape}")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"input_ids must be integers, got {ids.dtype}")
        vocab = self.manifest.model.get("vocab_size")
        if vocab is not None and (ids.min() < 0 or ids.max() >= vocab):
            raise ValueError(f"input_ids must be in [0, {vocab}), got values {ids.min()}..{ids.max()}")
        if ids.shape[1] > self.max_seq_len:
            raise ValueError(
                f"sequence of {ids.shape[1]} tokens exceeds this artifact's max_seq_len {self.max_seq_len}"
            )
        return ids.astype(np.int64)

    def forward(self, input_ids, bits: int) -> np.ndarray:
        """Full-sequence logits, float32 ``[1, S, V]``, from a fresh cache."""
        bits = self.check_bits(bits)
        ids = self._check_ids(input_ids)
        self._reset()
        return self._step(ids, 0, bits)

    def encode_prompt(self, prompt: str, chat: bool = True) -> list[int]:
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
        """Greedy decoding with the KV cache: one prefill, then one step per token."""
        bits = self.check_bits(bits)
        if max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        ids = self._check_ids(np.asarray([prompt_ids], dtype=np.int64))
        budget = self.max_seq_len - ids.shape[1]
        max_new_tokens = min(max_new_tokens, budget)
        eos = self.eos_token_ids() if stop_at_eos else set()
        stats = GenerationStats(prompt_tokens=ids.shape[1])
        out: list[int] = []
        self._reset()
        if max_new_tokens == 0:
            self.last_stats = stats
            return out
        t0 = time.perf_counter()
        logits = self._step(ids, 0, bits)
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
            logits = self._step(np.asarray([[token]], dtype=np.int64), pos, bits)
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
        prompt_ids = self.encode_prompt(prompt, chat=chat)
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

        self.generate_ids(prompt_ids, bits, max_new_tokens, on_token=stream)
        text = self.tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
        if on_text is not None and len(text) > len(emitted):
            on_text(text[len(emitted) :])
        return text
