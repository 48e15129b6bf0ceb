"""LAA, Low-precision Asynchronous Accumulation: delayed updates for ultra-low bit-widths.

OTARo observes that gradients taken at ultra-low precision (E5M3, E5M4) are
noisy and pull the shared float weights away from what higher precisions
need. LAA does not apply them at once: the gradients of low-bit steps are
summed into one accumulation buffer, and only on every ``interval``-th
low-bit visit (N = 10 by default) is one optimizer step taken with the
accumulated gradient (its mean over the N visits by default, i.e. one step
on a batch N times larger; ``reduce="sum"`` applies the sum). Steps at any
other precision update the weights immediately and leave the buffer alone.

One buffer is shared by all low bit-widths: "every N low-bit visits" counts
visits to any of them.
"""

from __future__ import annotations

import torch

from otaro_export.sefp import check_bits

DEFAULT_LOW_BITS = (3, 4)
DEFAULT_INTERVAL = 10


class ImmediateUpdate:
    """No LAA: every step updates the weights at once (the baseline)."""

    low_bits: tuple[int, ...] = ()

    def step(self, bits: int, optimizer: torch.optim.Optimizer) -> bool:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return True

    def state_dict(self) -> dict:
        return {"kind": "none"}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "none":
            raise ValueError(f"checkpoint has LAA state of kind {state.get('kind')!r}, but LAA is off in this run")


class LowPrecisionAccumulator:
    """Apply low-bit gradients every ``interval`` low-bit visits, others at once."""

    def __init__(
        self,
        params,
        low_bits=DEFAULT_LOW_BITS,
        interval: int = DEFAULT_INTERVAL,
        reduce: str = "mean",
    ):
        self.params = [p for p in params if p.requires_grad]
        self.low_bits = tuple(check_bits(b) for b in low_bits)
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(f"LAA interval must be an integer >= 1, got {interval!r}")
        if reduce not in ("mean", "sum"):
            raise ValueError(f"LAA reduce must be 'mean' or 'sum', got {reduce!r}")
        self.interval = interval
        self.reduce = reduce
        self.pending = 0  # low-bit visits accumulated since the last delayed update
        self.delayed_updates = 0
        self._buffers: list[torch.Tensor | None] = [None] * len(self.params)

    def step(self, bits: int, optimizer: torch.optim.Optimizer) -> bool:
        """Consume the gradients of one step taken at ``bits``. Returns True if the weights moved."""
        if bits not in self.low_bits:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return True
        self._accumulate()
        optimizer.zero_grad(set_to_none=True)
        self.pending += 1
        if self.pending < self.interval:
            return False
        scale = 1.0 / self.pending if self.reduce == "mean" else 1.0
        for p, buf in zip(self.params, self._buffers):
            p.grad = None if buf is None else buf.mul_(scale)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self._buffers = [None] * len(self.params)
        self.pending = 0
        self.delayed_updates += 1
        return True

    def _accumulate(self) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                if p.grad is None:
                    continue
                if self._buffers[i] is None:
                    self._buffers[i] = p.grad.detach().clone()
                else:
                    self._buffers[i].add_(p.grad)

    def state_dict(self) -> dict:
        return {
            "kind": "laa",
            "low_bits": list(self.low_bits),
            "interval": self.interval,
            "reduce": self.reduce,
            "pending": self.pending,
            "delayed_updates": self.delayed_updates,
            "buffers": [None if b is None else b.detach().clone() for b in self._buffers],
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "laa":
            raise ValueError(f"checkpoint has LAA state of kind {state.get('kind')!r}, but LAA is on in this run")
        buffers = state["buffers"]
        if len(buffers) != len(self.params):
            raise ValueError(
                f"LAA state holds {len(buffers)} gradient buffers, but this run trains {len(self.params)} tensors"
            )
        for p, b in zip(self.params, buffers):
            if b is not None and b.shape != p.shape:
                raise ValueError(f"LAA buffer of shape {tuple(b.shape)} does not match parameter {tuple(p.shape)}")
        self.low_bits = tuple(state["low_bits"])
        self.interval = int(state["interval"])
        self.reduce = state["reduce"]
        self.pending = int(state["pending"])
        self.delayed_updates = int(state["delayed_updates"])
        self._buffers = [None if b is None else b.to(p.device, p.dtype).clone() for p, b in zip(self.params, buffers)]
