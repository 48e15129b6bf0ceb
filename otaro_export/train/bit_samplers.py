"""Per-step bit-width choice: the interface and the two baselines (fixed, uniform).

A sampler is asked ``choose()`` once per optimisation step, the trainer runs
the step at that precision and reports its loss with ``observe(bits, loss)``.
Every sampler records the path it took (``path``) and round-trips its full
state through ``state_dict()``/``load_state_dict()`` so a resumed run picks
exactly the bit-widths an uninterrupted one would have.
BPS, the OTARo sampler, lives in :mod:`otaro_export.train.bps`.
"""

from __future__ import annotations

import random
from typing import Protocol

from otaro_export.sefp import SUPPORTED_BITS, check_bits


class BitSampler(Protocol):
    path: list[int]

    def choose(self) -> int: ...

    def observe(self, bits: int, loss: float) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_bit_set(bits) -> tuple[int, ...]:
    bits = tuple(check_bits(b) for b in bits)
    if not bits:
        raise ValueError("at least one bit-width is needed")
    if len(set(bits)) != len(bits):
        raise ValueError(f"bit-widths repeat: {list(bits)}")
    return bits


class FixedSampler:
    """Always the same precision: single-precision QAT (e.g. only E5M8)."""

    def __init__(self, bits: int = 8):
        self.bits = check_bits(bits)
        self.path: list[int] = []

    def choose(self) -> int:
        self.path.append(self.bits)
        return self.bits

    def observe(self, bits: int, loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {"kind": "fixed", "bits": self.bits, "path": list(self.path)}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "fixed")
        self.bits = state["bits"]
        self.path = list(state["path"])


class UniformSampler:
    """Each step draws a bit-width uniformly at random (own seeded RNG, saved with the state)."""

    def __init__(self, bits=SUPPORTED_BITS, seed: int = 0):
        self.bits = check_bit_set(bits)
        self._rng = random.Random(seed)
        self.path: list[int] = []

    def choose(self) -> int:
        choice = self.bits[self._rng.randrange(len(self.bits))]
        self.path.append(choice)
        return choice

    def observe(self, bits: int, loss: float) -> None:
        pass

    def state_dict(self) -> dict:
        return {"kind": "uniform", "bits": list(self.bits), "rng": self._rng.getstate(), "path": list(self.path)}

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "uniform")
        self.bits = tuple(state["bits"])
        rng_state = state["rng"]
        # JSON/torch round trips may turn the inner tuple into a list.
        self._rng.setstate((rng_state[0], tuple(rng_state[1]), rng_state[2]))
        self.path = list(state["path"])


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"sampler state is for a {state.get('kind')!r} sampler, not {kind!r}")
