r"""BPS, Bit-width Path Search: pick each step's precision by exploitation + exploration.

OTARo (arXiv 2511.13147) picks the bit-width of every fine-tuning step so that
precisions whose loss is currently worse are trained more (exploitation) while
rarely picked precisions are not starved (exploration). The paper's exact
formula was not reachable from this project's sources, so this module uses a
UCB1-style score, stated here and in docs/TUNING.md:

.. math::

    \mathrm{score}_t(b) = \hat L_b + \lambda \sqrt{\frac{\ln t}{n_b}}, \qquad
    \hat L_b = \frac{\bar L_b}{\max_{b'} \bar L_{b'}}

* ``t``: number of steps taken so far (picks made before this one);
* ``n_b``: how many times bit-width ``b`` has been picked;
* ``\bar L_b``: running loss of ``b``, an exponential moving average of the
  losses observed at ``b`` (``\bar L_b \leftarrow \beta \bar L_b + (1-\beta) L``,
  the first observation initialises it), ``\beta = 0.9`` by default;
* ``\hat L_b`` in ``[0, 1]``: running loss normalised by the largest running
  loss, so ``\lambda`` has the same meaning for any loss scale;
* ``\lambda = 5`` by default (exploration weight).

The step's bit-width is ``argmax_b score_t(b)``. A bit-width never picked has
an infinite score, so the first steps visit every precision once (in the
given order); ties go to the earlier bit-width of the list. The choice is
deterministic given the observed losses.
"""

from __future__ import annotations

import math

from otaro_export.sefp import SUPPORTED_BITS
from otaro_export.train.bit_samplers import _check_kind, check_bit_set

DEFAULT_LAMBDA = 5.0
DEFAULT_LOSS_MOMENTUM = 0.9


class BPSSampler:
    """Bit-width Path Search (see the module docstring for the score)."""

    def __init__(self, bits=SUPPORTED_BITS, lam: float = DEFAULT_LAMBDA, momentum: float = DEFAULT_LOSS_MOMENTUM):
        self.bits = check_bit_set(bits)
        if lam < 0 or not math.isfinite(lam):
            raise ValueError(f"BPS exploration weight lambda must be a finite number >= 0, got {lam}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"BPS loss momentum must be in [0, 1), got {momentum}")
        self.lam = float(lam)
        self.momentum = float(momentum)
        self.counts = {b: 0 for b in self.bits}
        self.running_loss: dict[int, float | None] = {b: None for b in self.bits}
        self.path: list[int] = []

    def scores(self) -> dict[int, float]:
        """The score of every bit-width for the next pick (``inf`` for never-picked ones)."""
        t = len(self.path)
        seen = [v for v in self.running_loss.values() if v is not None]
        top = max(seen) if seen else 0.0
        out = {}
        for b in self.bits:
            n, loss = self.counts[b], self.running_loss[b]
            if n == 0:
                out[b] = math.inf
                continue
            exploit = (loss / top) if (loss is not None and top > 0) else 0.0
            explore = self.lam * math.sqrt(math.log(t) / n) if t > 0 else 0.0
            out[b] = exploit + explore
        return out

    def choose(self) -> int:
        scores = self.scores()
        best = max(self.bits, key=lambda b: (scores[b], -self.bits.index(b)))
        self.counts[best] += 1
        self.path.append(best)
        return best

    def observe(self, bits: int, loss: float) -> None:
        if bits not in self.counts:
            raise ValueError(f"BPS was not configured for E5M{bits}; its bit-widths are {list(self.bits)}")
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f"non-finite loss {loss} at E5M{bits}: training diverged (lower the learning rate)")
        previous = self.running_loss[bits]
        self.running_loss[bits] = loss if previous is None else self.momentum * previous + (1 - self.momentum) * loss

    def state_dict(self) -> dict:
        return {
            "kind": "bps",
            "bits": list(self.bits),
            "lam": self.lam,
            "momentum": self.momentum,
            "counts": {str(b): n for b, n in self.counts.items()},
            "running_loss": {str(b): v for b, v in self.running_loss.items()},
            "path": list(self.path),
        }

    def load_state_dict(self, state: dict) -> None:
        _check_kind(state, "bps")
        self.bits = tuple(state["bits"])
        self.lam = float(state["lam"])
        self.momentum = float(state["momentum"])
        self.counts = {int(b): int(n) for b, n in state["counts"].items()}
        self.running_loss = {int(b): (None if v is None else float(v)) for b, v in state["running_loss"].items()}
        self.path = list(state["path"])
