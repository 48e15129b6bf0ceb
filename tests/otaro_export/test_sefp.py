import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from otaro_export import sefp
from otaro_export.errors import InvalidBitsError, NonFiniteWeightError
from otaro_export.runtime_ops import reference

BITS = sefp.SUPPORTED_BITS


def assert_matches_reference(w: torch.Tensor):
    q = sefp.quantize(w)
    s, m, e = reference.quantize(w.numpy())
    np.testing.assert_array_equal(q.signs.numpy(), s)
    np.testing.assert_array_equal(q.magnitudes.numpy(), m)
    np.testing.assert_array_equal(q.exponents.numpy(), e)
    for b in BITS:
        ours = q.dequantize(b).numpy()
        ref = reference.dequantize(s, m, e, w.shape[1], b)
        # bit-for-bit: compare the raw float32 bits (also tells -0.0 from 0.0)
        np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def adversarial_weights() -> dict[str, torch.Tensor]:
    tiny = torch.finfo(torch.float32).tiny
    cases = {
        "zeros": torch.zeros(3, 128),
        "negative_zero": torch.full((2, 64), -0.0),
        "subnormals": torch.full((2, 70), tiny / 8) * torch.randn(2, 70).sign(),
        "huge": torch.tensor([[3.0e38, -1.0e38, 65504.0, 1.0] * 16]),
        "just_above_clamp": torch.tensor([[2.0**17, 2.0**16.5, -(2.0**16)] + [1.0] * 61]),
        "below_clamp": torch.tensor([[2.0**-20, -(2.0**-16), 2.0**-15] + [0.0] * 61]),
        "powers_of_two": torch.tensor([[2.0**i for i in range(-8, 8)] * 4]),
        "k_not_multiple_of_64": torch.randn(5, 100),
        "k_smaller_than_group": torch.randn(4, 7),
        "one_outlier": torch.cat([torch.randn(1, 63) * 1e-3, torch.tensor([[100.0]])], dim=1).repeat(3, 1),
        "mixed_groups": torch.cat([torch.zeros(2, 64), torch.randn(2, 64)], dim=1),
    }
    return cases


@pytest.mark.parametrize("name,w", adversarial_weights().items())
def test_adversarial_matches_numpy_reference(name, w):
    assert_matches_reference(w)


@settings(max_examples=60, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.integers(1, 200)),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_random_matches_numpy_reference(w):
    assert_matches_reference(torch.from_numpy(w))


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 3), st.integers(1, 150)),
        elements=st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32),
    )
)
def test_nesting_quantize_at_k_equals_truncated_m8(w):
    """Nesting: quantizing straight to Mk == truncating the stored M8 data to k bits."""
    w = torch.from_numpy(w)
    stored = sefp.quantize(w)
    for b in BITS:
        direct = sefp.fake_quantize(w, b)
        torch.testing.assert_close(direct, stored.dequantize(b), rtol=0, atol=0)


def test_spec_values_by_hand():
    # group max 1.5 -> e = 0; q = floor(|w| * 128)
    w = torch.tensor([[1.5, -0.75, 0.3, 1.0] + [0.0] * 60])
    q = sefp.quantize(w)
    assert q.exponents.tolist() == [[0]]
    assert q.magnitudes[0, :4].tolist() == [192, 96, 38, 128]  # 0.3*128 = 38.4 -> 38 (truncate)
    assert q.signs[0, :4].tolist() == [0, 1, 0, 0]
    # E5M3 keeps the top 3 bits: 192 -> 192, 96 -> 96, 38 -> 32, 128 -> 128
    assert q.dequantize(3)[0, :4].tolist() == [1.5, -0.75, 0.25, 1.0]


def test_truncation_never_rounds_up():
    w = torch.tensor([[0.999999] + [0.0] * 63])  # e = -1, q = floor(0.999999 * 256) = 255
    q = sefp.quantize(w)
    assert q.exponents.item() == -1 and q.magnitudes[0, 0].item() == 255
    for b in BITS:
        assert q.dequantize(b)[0, 0].item() <= 0.999999


def test_exponent_clamp_saturates_magnitude():
    q = sefp.quantize(torch.tensor([[2.0**20] + [0.0] * 63]))
    assert q.exponents.item() == 16 and q.magnitudes[0, 0].item() == 255


def test_padding_and_shapes():
    q = sefp.quantize(torch.randn(3, 130))
    assert q.magnitudes.shape == (3, 192) and q.exponents.shape == (3, 3)
    assert q.magnitudes.dtype == torch.uint8 and q.exponents.dtype == torch.int8
    assert q.in_features == 130 and q.dequantize(8).shape == (3, 130)
    assert (q.magnitudes[:, 130:] == 0).all()


def test_error_shrinks_with_precision():
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    q = sefp.quantize(w)
    sqnr = [sefp.weight_sqnr_db(w, q.dequantize(b)) for b in BITS]
    assert all(a < b for a, b in zip(sqnr, sqnr[1:]))
    # each mantissa bit is worth roughly 6 dB
    assert 4.0 < (sqnr[-1] - sqnr[0]) / 5 < 7.0


def test_bits_at_rest():
    assert sefp.BITS_PER_WEIGHT_AT_REST == 9.125
    assert math.isclose(sefp.quantize(torch.randn(2, 64)).nbytes_at_rest(), 2 * 64 * 9.125 / 8)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_names_tensor(bad):
    w = torch.randn(4, 64)
    w[2, 5] = bad
    with pytest.raises(NonFiniteWeightError, match=r"model\.layers\.3\.mlp\.up_proj\.weight.*\[2, 5\]"):
        sefp.quantize(w, name="model.layers.3.mlp.up_proj.weight")


@pytest.mark.parametrize("bits", [2, 9, 0, -1, 3.0, "8", True, np.bool_(True), np.float32(5), torch.tensor(8.0)])
def test_bad_bits_rejected(bits):
    with pytest.raises(InvalidBitsError):
        sefp.check_bits(bits)
    if isinstance(bits, int) and not isinstance(bits, bool):
        with pytest.raises(InvalidBitsError):
            sefp.quantize(torch.randn(1, 64)).dequantize(bits)


def test_bits_tensor_accepted():
    assert sefp.check_bits(torch.tensor(5)) == 5


def test_bits_of_any_integer_type_accepted():
    for bits in (np.int64(3), np.uint8(4), np.int32(8), torch.tensor(6, dtype=torch.int32)):
        assert sefp.check_bits(bits) == int(bits) and type(sefp.check_bits(bits)) is int


@pytest.mark.parametrize(
    "w,exc",
    [
        (torch.ones(4, 64, dtype=torch.int32), TypeError),
        (torch.ones(64), ValueError),
        (torch.ones(2, 2, 64), ValueError),
        ([[1.0]], TypeError),
    ],
)
def test_bad_weights_rejected(w, exc):
    with pytest.raises(exc):
        sefp.quantize(w)


def test_half_and_bfloat16_weights_are_computed_in_float32():
    w = torch.randn(3, 64).to(torch.bfloat16)
    assert torch.equal(sefp.quantize(w).magnitudes, sefp.quantize(w.float()).magnitudes)


@pytest.mark.parametrize("name,w", adversarial_weights().items())
def test_fake_quantize_with_a_table_or_exponents_is_the_decode_bit_for_bit(name, w):
    """The training path (one signed gather per weight) equals quantize + dequantize, -0.0 included."""
    torch.manual_seed(0)
    fitted = sefp.center_levels() * torch.rand(sefp.LEVELS_SHAPE).add(0.5)  # an arbitrary table
    for row, k in enumerate(BITS):
        fitted[row, 1 << k :] = 0
    for levels in (None, sefp.center_levels(), fitted):
        for rule in ("floor", "search"):
            q = sefp.quantize(w, exponent_rule=rule, levels=levels)
            for b in BITS:
                got = sefp.fake_quantize(w, b, levels=levels, exponents=q.exponents)
                want = q.dequantize(b, levels)
                np.testing.assert_array_equal(got.numpy().view(np.uint32), want.numpy().view(np.uint32))


def test_fake_quantize_refuses_nan_and_inf_but_not_a_sum_that_overflows():
    big = torch.full((2, 64), 3.0e38)  # every value finite, the sum is not
    sefp.fake_quantize(big, 3, levels=sefp.center_levels())
    for bad in (float("nan"), float("inf")):
        w = torch.randn(2, 64)
        w[1, 5] = bad
        with pytest.raises(NonFiniteWeightError):
            sefp.fake_quantize(w, 3, levels=sefp.center_levels())
        with pytest.raises(NonFiniteWeightError):
            sefp.fake_quantize(w, 3)
