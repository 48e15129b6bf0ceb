"""Fixtures for the demo tests. A fake backend for unit-testing the demo's policy and bookkeeping ONLY.

It has the real Session base class (validation, greedy loop, chat encoding) but
its ``_step`` returns logits that favour one fixed token, so a test knows which
option must win and when generation stops. End-to-end behaviour is tested
against a real exported artifact in test_demo_e2e.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otaro_export.manifest import Manifest
from otaro_export.runtime.session import Session
from otaro_export.testing import TINY_VOCAB, tiny_tokenizer


def fake_manifest(precisions=(3, 4, 5, 6, 7, 8), max_seq_len=256) -> Manifest:
    return Manifest(
        target="onnx",
        artifact="model.onnx",
        kernels="fused",
        kernel_library=None,
        quantized_layers=[],
        inputs=["input_ids", "bits"],
        outputs=["logits"],
        model={"vocab_size": TINY_VOCAB, "max_seq_len": max_seq_len, "eos_token_ids": []},
        precisions=list(precisions),
    )


class FakeSession(Session):
    def __init__(self, favourite: str = "b", precisions=(3, 4, 5, 6, 7, 8), max_seq_len=256):
        super().__init__(Path("/nonexistent"), fake_manifest(precisions, max_seq_len), tiny_tokenizer())
        (self.favourite_id,) = self.tokenizer(favourite, add_special_tokens=False)["input_ids"]
        self.bits_seen: list[int] = []
        self._max = max_seq_len

    @property
    def max_seq_len(self) -> int:
        return self._max

    def _reset(self) -> None:
        pass

    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        self.bits_seen.append(bits)
        logits = np.zeros((1, 1 if last_only else input_ids.shape[1], TINY_VOCAB), dtype=np.float32)
        logits[..., self.favourite_id] = 5.0
        return logits


@pytest.fixture
def fake_session():
    return FakeSession
