import pytest
import torch

from otaro_export.train.laa import ImmediateUpdate, LowPrecisionAccumulator


def _run(updater, bits_seq, grads):
    """SGD lr=1 on one parameter with prescribed gradients; returns the weight after each step."""
    p = torch.nn.Parameter(torch.zeros(3))
    if isinstance(updater, type):
        updater = updater([p])
    else:
        updater.params = [p]
        updater._buffers = [None]
    opt = torch.optim.SGD([p], lr=1.0)
    trace, applied = [], []
    for bits, g in zip(bits_seq, grads):
        p.grad = g.clone()
        applied.append(updater.step(bits, opt))
        trace.append(p.detach().clone())
    return trace, applied


def test_low_bit_updates_are_applied_exactly_every_n_low_bit_visits():
    bits_seq = [3, 8, 4, 3, 6, 4, 3, 3, 5, 4]
    grads = [torch.full((3,), float(i + 1)) for i in range(len(bits_seq))]
    laa = LowPrecisionAccumulator([torch.nn.Parameter(torch.zeros(3))], low_bits=(3, 4), interval=3)
    trace, applied = _run(laa, bits_seq, grads)
    # High bits move the weight at once; low bits only on the 3rd, 6th, ... low-bit visit.
    assert applied == [False, True, False, True, True, False, False, True, True, False]
    w = torch.zeros(3)
    expected = []
    pending = []
    for bits, g in zip(bits_seq, grads):
        if bits in (3, 4):
            pending.append(g)
            if len(pending) == 3:
                w = w - torch.stack(pending).mean(0)  # one step on the mean of the 3 gradients
                pending = []
        else:
            w = w - g
        expected.append(w.clone())
    for got, want in zip(trace, expected):
        assert torch.allclose(got, want, rtol=0, atol=1e-6)
    assert laa.delayed_updates == 2 and laa.pending == 1


def test_interval_one_equals_immediate_updates_and_sum_reduce():
    bits_seq = [3, 4, 8, 3]
    grads = [torch.full((3,), float(i + 1)) for i in range(4)]
    one, _ = _run(LowPrecisionAccumulator([torch.nn.Parameter(torch.zeros(3))], interval=1), bits_seq, grads)
    now, applied = _run(ImmediateUpdate(), bits_seq, grads)
    assert all(applied)
    assert all(torch.equal(a, b) for a, b in zip(one, now))
    summed, _ = _run(
        LowPrecisionAccumulator([torch.nn.Parameter(torch.zeros(3))], interval=2, reduce="sum"), [3, 3], grads[:2]
    )
    assert torch.equal(summed[-1], torch.full((3,), -3.0))


def test_state_round_trip_mid_accumulation():
    p1, p2 = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    a = LowPrecisionAccumulator([p1], interval=3)
    opt1 = torch.optim.SGD([p1], lr=1.0)
    for g in (1.0, 2.0):
        p1.grad = torch.full((2,), g)
        a.step(3, opt1)
    b = LowPrecisionAccumulator([p2], interval=3)
    b.load_state_dict(a.state_dict())
    assert b.pending == 2
    opt2 = torch.optim.SGD([p2], lr=1.0)
    p1.grad, p2.grad = torch.full((2,), 3.0), torch.full((2,), 3.0)
    assert a.step(4, opt1) and b.step(4, opt2)
    assert torch.equal(p1, p2) and torch.equal(p2.detach(), torch.full((2,), -2.0))


def test_bad_settings_and_mismatched_state():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match="interval"):
        LowPrecisionAccumulator([p], interval=0)
    with pytest.raises(ValueError, match="reduce"):
        LowPrecisionAccumulator([p], reduce="max")
    with pytest.raises(ValueError, match="LAA is on"):
        LowPrecisionAccumulator([p]).load_state_dict(ImmediateUpdate().state_dict())
    with pytest.raises(ValueError, match="LAA is off"):
        ImmediateUpdate().load_state_dict(LowPrecisionAccumulator([p]).state_dict())
    with pytest.raises(ValueError, match="buffers"):
        LowPrecisionAccumulator([p, torch.nn.Parameter(torch.zeros(1))]).load_state_dict(
            LowPrecisionAccumulator([p]).state_dict()
        )
