"""Learning-rate schedules of a tuning run: constant (the paper's setting) or linear warm-up + cosine decay.

The rate is a pure function of (config, step), so it needs no state in
checkpoints and a resumed run gets exactly the rates of an uninterrupted
one. An LAA delayed update uses the rate of the step that applies it.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("constant", "cosine")


def learning_rate(
    base_lr: float,
    step: int,
    total_steps: int,
    schedule: str = "constant",
    warmup_steps: int = 0,
    min_ratio: float = 0.0,
) -> float:
    """The rate for 0-based ``step`` of ``total_steps``.

    ``warmup_steps`` ramps linearly from ``base_lr / warmup_steps`` to ``base_lr``
    (both schedules); ``cosine`` then decays to ``min_ratio * base_lr`` at the last step.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"lr schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError("warmup_steps and total_steps must be >= 0")
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return base_lr
    decay_steps = max(total_steps - warmup_steps - 1, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def apply_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
