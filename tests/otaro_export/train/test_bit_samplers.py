import pytest

from otaro_export.errors import InvalidBitsError
from otaro_export.train.bit_samplers import FixedSampler, UniformSampler


def test_fixed_sampler_always_picks_its_precision():
    s = FixedSampler(8)
    assert [s.choose() for _ in range(5)] == [8] * 5
    assert s.path == [8] * 5


def test_uniform_sampler_is_seeded_covers_all_and_resumes():
    a, b = UniformSampler(seed=3), UniformSampler(seed=3)
    first = [a.choose() for _ in range(60)]
    assert first == [b.choose() for _ in range(60)]
    assert set(first) == {3, 4, 5, 6, 7, 8}
    assert first != [UniformSampler(seed=4).choose() for _ in range(60)]
    c = UniformSampler(seed=0)
    c.load_state_dict(a.state_dict())
    assert [a.choose() for _ in range(20)] == [c.choose() for _ in range(20)]


def test_bad_bit_sets():
    with pytest.raises(InvalidBitsError):
        FixedSampler(9)
    with pytest.raises(ValueError, match="repeat"):
        UniformSampler(bits=(3, 3))
    with pytest.raises(ValueError, match="at least one"):
        UniformSampler(bits=())
