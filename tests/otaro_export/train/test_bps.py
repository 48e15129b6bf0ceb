import math

import pytest

from otaro_export.errors import InvalidBitsError
from otaro_export.train.bps import BPSSampler


def test_first_round_visits_every_bit_width_in_order():
    s = BPSSampler()
    picks = []
    for _ in range(6):
        b = s.choose()
        s.observe(b, 1.0)
        picks.append(b)
    assert picks == [3, 4, 5, 6, 7, 8]


def test_scores_follow_the_documented_formula():
    s = BPSSampler(bits=(3, 8), lam=5.0, momentum=0.5)
    for b, loss in ((3, 2.0), (8, 0.5)):  # first round
        assert s.choose() == b
        s.observe(b, loss)
    s.counts[3] += 1  # pretend E5M3 was picked once more, with a second loss
    s.path.append(3)
    s.observe(3, 4.0)  # EMA: 0.5 * 2.0 + 0.5 * 4.0 = 3.0
    t = 3
    top = 3.0
    expected = {3: 3.0 / top + 5.0 * math.sqrt(math.log(t) / 2), 8: 0.5 / top + 5.0 * math.sqrt(math.log(t) / 1)}
    assert s.scores() == pytest.approx(expected, rel=1e-12)
    assert s.choose() == max(expected, key=expected.get)


def test_under_sampled_bit_width_gets_the_exploration_bonus():
    s = BPSSampler(bits=(3, 4), lam=5.0)
    s.counts = {3: 20, 4: 2}
    s.running_loss = {3: 1.0, 4: 1.0}  # equal losses: only the bonus differs
    s.path = [3] * 20 + [4] * 2
    assert s.choose() == 4


def test_high_loss_bit_width_gets_picked_more_and_none_starves():
    s = BPSSampler(lam=5.0)
    loss = {3: 3.6, 4: 0.77, 5: 0.21, 6: 0.061, 7: 0.02, 8: 0.005}  # untuned SmolLM2 KLs
    for _ in range(300):
        b = s.choose()
        s.observe(b, loss[b])
    counts = [s.counts[b] for b in (3, 4, 5, 6, 7, 8)]
    assert counts[0] == max(counts) and counts[0] > 1.5 * counts[-1]
    assert counts == sorted(counts, reverse=True)  # worse loss -> more picks
    assert min(counts) >= 20  # exploration keeps every precision trained
    assert len(s.path) == 300


def test_lambda_zero_is_pure_exploitation():
    s = BPSSampler(bits=(3, 4, 5), lam=0.0)
    for _ in range(3):
        b = s.choose()
        s.observe(b, {3: 0.1, 4: 5.0, 5: 1.0}[b])
    assert [s.choose() for _ in range(4)] == [4, 4, 4, 4]


def test_state_round_trip_continues_identically():
    a = BPSSampler()
    for i in range(10):
        b = a.choose()
        a.observe(b, 1.0 / (b + i))
    b_sampler = BPSSampler()
    b_sampler.load_state_dict(a.state_dict())
    for _ in range(10):
        x, y = a.choose(), b_sampler.choose()
        assert x == y
        a.observe(x, 0.3 * x)
        b_sampler.observe(y, 0.3 * y)
    assert a.path == b_sampler.path


def test_bad_inputs():
    with pytest.raises(InvalidBitsError):
        BPSSampler(bits=(2, 3))
    with pytest.raises(ValueError, match="lambda"):
        BPSSampler(lam=-1)
    s = BPSSampler()
    with pytest.raises(ValueError, match="diverged"):
        s.observe(3, float("nan"))
    with pytest.raises(ValueError, match="not configured"):
        BPSSampler(bits=(3,)).observe(8, 1.0)
    with pytest.raises(ValueError, match="uniform"):
        s.load_state_dict({"kind": "uniform"})
