"""Losses and agreement metrics over the scored (masked) positions of a batch.

All reductions are means over scored positions, computed in float32.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F


def _flat(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return logits[mask].float()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``KL(P_teacher || P_student)`` per scored position, averaged.

    ``teacher_logprobs`` are log-softmax outputs of the FP teacher, either full
    ``[B, T, V]`` or already gathered at the scored positions ``[M, V]``.
    """
    student = F.log_softmax(_flat(student_logits, mask), dim=-1)
    teacher = teacher_logprobs if teacher_logprobs.dim() == 2 else teacher_logprobs[mask]
    teacher = teacher.float()
    return (teacher.exp() * (teacher - student)).sum(-1).mean()


def next_token_nll(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the actual next tokens at scored positions."""
    targets = torch.roll(input_ids, shifts=-1, dims=1)[mask]
    return F.cross_entropy(_flat(logits, mask), targets)


def top1_agreement(student_logits: torch.Tensor, teacher_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Fraction of scored positions where student and teacher argmax tokens agree."""
    teacher = teacher_logprobs if teacher_logprobs.dim() == 2 else teacher_logprobs[mask]
    return (_flat(student_logits, mask).argmax(-1) == teacher.argmax(-1)).float().mean()
