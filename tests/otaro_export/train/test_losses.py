import contextlib

import pytest
import torch
from torch.nn import functional as F

from otaro_export.train.losses import kl_to_teacher, next_token_nll, top1_agreement


def test_kl_is_zero_for_identical_and_matches_definition(rng):
    logits = torch.randn(2, 5, 11, generator=rng)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    teacher = F.log_softmax(logits, -1)
    assert kl_to_teacher(logits, teacher, mask).abs() < 1e-6
    student = torch.randn(2, 5, 11, generator=rng)
    p, q = teacher[mask].exp(), F.log_softmax(student[mask], -1)
    expected = (p * (teacher[mask] - q)).sum(-1).mean()
    assert torch.allclose(kl_to_teacher(student, teacher, mask), expected, atol=1e-6)
    assert torch.allclose(kl_to_teacher(student, teacher[mask], mask), expected, atol=1e-6)  # pre-gathered


def test_nll_and_top1(rng):
    ids = torch.tensor([[1, 2, 3, 0]])
    mask = torch.tensor([[True, True, False, False]])
    logits = torch.full((1, 4, 5), -10.0)
    logits[0, 0, 2] = 10.0  # predicts the true next token 2
    logits[0, 1, 0] = 10.0  # predicts 0, true next is 3
    expected = F.cross_entropy(logits[0, :2], torch.tensor([2, 3]))
    assert torch.allclose(next_token_nll(logits, ids, mask), expected)
    teacher = F.log_softmax(logits.clone(), -1)
    assert top1_agreement(logits, teacher, mask) == 1.0
    teacher[0, 1] = F.log_softmax(torch.tensor([0.0, 0, 0, 9, 0]), -1)
    assert top1_agreement(logits, teacher, mask) == 0.5


def test_sum_reduction_is_the_mean_times_the_scored_tokens(rng):
    """Distributed tuning adds every rank's sum: sum / tokens must be the mean one process computes."""
    logits = torch.randn(2, 5, 11, generator=rng)
    ids = torch.randint(0, 11, (2, 5), generator=rng)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, False]])
    teacher = F.log_softmax(torch.randn(2, 5, 11, generator=rng), -1)
    n = int(mask.sum())
    for loss in (lambda r: kl_to_teacher(logits, teacher, mask, r), lambda r: next_token_nll(logits, ids, mask, r)):
        torch.testing.assert_close(loss("sum"), loss("mean") * n)
    with pytest.raises(ValueError, match="reduction"):
        kl_to_teacher(logits, teacher, mask, "max")


def test_logits_at_the_scored_positions_only_give_the_same_losses_and_gradients(tiny, chat_samples):
    from otaro_export.train.losses import scored_positions_only
    from otaro_export.train.tune_data import collate

    model = tiny.model
    batch = collate(chat_samples, [0, 3, 5], "cpu")  # rows of different lengths: prompts and padding skipped
    mask = batch.loss_mask
    teacher = F.log_softmax(torch.randn(int(mask.sum()), model.config.vocab_size), -1)
    results = []
    for only_scored in (False, True):
        model.zero_grad(set_to_none=True)
        context = scored_positions_only(model, mask) if only_scored else contextlib.nullcontext()
        with context:
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        assert logits.dim() == (2 if only_scored else 3)
        loss = kl_to_teacher(logits, teacher, mask, "sum") + next_token_nll(logits, batch.input_ids, mask, "sum")
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (full, full_grads), (scored, scored_grads) = results
    torch.testing.assert_close(scored, full, rtol=1e-6, atol=0)
    for name, grad in full_grads.items():
        torch.testing.assert_close(scored_grads[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert model.get_output_embeddings()._forward_pre_hooks == {}  # the hook is gone after the block
    with pytest.raises(RuntimeError, match="does not match the mask"), scored_positions_only(model, mask[:, :-1]):
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    model.zero_grad(set_to_none=True)
