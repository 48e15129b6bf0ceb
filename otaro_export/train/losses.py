"""Losses and agreement metrics over the scored (masked) positions of a batch.

Reductions are over scored positions, in float32: ``mean`` (the default) or ``sum``
(distributed tuning adds every rank's sum and divides by the global token count).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _flat(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits[mask].float()


def _reduce(per_token: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return per_token.mean()
    if reduction == "sum":
        return per_token.sum()
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def kl_to_teacher(
    student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """``KL(P_teacher || P_student)`` per scored position, averaged.

    ``teacher_logprobs`` are log-softmax outputs of the FP teacher, either full
    ``[B, T, V]`` or already gathered at the scored positions ``[M, V]``.
    """
    student = F.log_softmax(_flat(student_logits, mask), dim=-1)
    teacher = teacher_logprobs if teacher_logprobs.dim() == 2 else teacher_logprobs[mask]
    teacher = teacher.float()
    return _reduce((teacher.exp() * (teacher - student)).sum(-1), reduction)


def next_token_nll(
    logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Negative log-likelihood of the actual next tokens at scored positions (mean or sum)."""
    targets = torch.roll(input_ids, shifts=-1, dims=1)[mask]
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return F.cross_entropy(_flat(logits, mask), targets, reduction=reduction)


def top1_agreement(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of scored positions where student and teacher argmax tokens agree."""
    teacher = teacher_logprobs if teacher_logprobs.dim() == 2 else teacher_logprobs[mask]
    return (_flat(student_logits, mask).argmax(-1) == teacher.argmax(-1)).float().mean()
