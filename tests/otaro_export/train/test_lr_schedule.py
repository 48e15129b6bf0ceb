import math

import pytest
import torch

from otaro_export.train.lr_schedule import apply_learning_rate, learning_rate


def test_constant_schedule_is_the_base_rate_at_every_step():
    assert [learning_rate(1e-3, s, 10) for s in range(10)] == [1e-3] * 10


def test_warmup_ramps_linearly_then_holds():
    rates = [learning_rate(1.0, s, 10, "constant", warmup_steps=4) for s in range(6)]
    assert rates == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_starts_at_base_ends_at_min_and_never_increases():
    total = 50
    rates = [learning_rate(2.0, s, total, "cosine", warmup_steps=5, min_ratio=0.1) for s in range(total)]
    assert rates[4] == pytest.approx(2.0)  # last warm-up step reaches the base rate
    assert rates[5] == pytest.approx(2.0)  # decay starts from the base rate
    assert rates[-1] == pytest.approx(0.2)
    decay = rates[5:]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    mid = 5 + (total - 5 - 1) / 2
    assert learning_rate(2.0, int(mid), total, "cosine", 5, 0.1) == pytest.approx(
        2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (int(mid) - 5) / (total - 6))))
    )


def test_unknown_schedule_and_negative_warmup_are_refused():
    with pytest.raises(ValueError, match="lr schedule"):
        learning_rate(1.0, 0, 10, "linear")
    with pytest.raises(ValueError, match="warmup"):
        learning_rate(1.0, 0, 10, "cosine", warmup_steps=-1)


def test_apply_sets_every_param_group():
    opt = torch.optim.SGD(
        [{"params": [torch.zeros(1, requires_grad=True)]}, {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0
    )
    apply_learning_rate(opt, 0.125)
    assert [g["lr"] for g in opt.param_groups] == [0.125, 0.125]
