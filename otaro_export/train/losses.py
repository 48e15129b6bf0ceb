"""Losses and agreement metrics over the scored (masked) positions of a batch.

Reductions are over scored positions, in float32: ``mean`` (the default) or ``sum``
(distributed tuning adds every rank's sum and divides by the global token count).
Student logits are ``[B, T, V]``, or ``[M, V]`` already at the scored positions
(row-major, as ``logits[mask]``), which :func:`scored_positions_only` makes.
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn import functional as F


def _flat(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (logits if logits.dim() == 2 else logits[mask]).float()


@contextlib.contextmanager
def scored_positions_only(model: torch.nn.Module, mask: torch.Tensor):
    """Within the block, ``model``'s output layer projects only the ``mask`` positions: logits come out ``[M, V]``.

    The losses read nothing else, and the vocabulary projection is the largest matmul: prompt and
    padding positions cost it (forward and backward) for nothing. Each kept position's logits are the
    same function of its hidden state as before; only the GEMM's row count changes.
    """
    head = model.get_output_embeddings()

    def gather(_module, args):
        hidden = args[0]
        if tuple(hidden.shape[:-1]) != tuple(mask.shape):
            raise RuntimeError(f"output layer input {list(hidden.shape)} does not match the mask {list(mask.shape)}")
        return (hidden[mask], *args[1:])

    handle = head.register_forward_pre_hook(gather)
    try:
        yield
    finally:
        handle.remove()


def scored_logits(model, batch, module: torch.nn.Module | None = None, **forward_kwargs) -> torch.Tensor:
    """``model``'s logits at ``batch.loss_mask``, ``[M, V]`` (:func:`scored_positions_only`).

    ``module``: the model that owns the output layer when ``model`` wraps it (DDP).
    """
    with scored_positions_only(model if module is None else module, batch.loss_mask):
        return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, **forward_kwargs).logits


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
