import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from otaro_export import packing, sefp


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 5), st.integers(1, 300), st.integers(0, 2**31 - 1))
def test_pack_unpack_round_trip(n, k, seed):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 10
    q = sefp.quantize(w)
    packed = packing.pack(q)
    back = packed.unpack()
    assert torch.equal(back.signs, q.signs)
    assert torch.equal(back.magnitudes, q.magnitudes)
    assert torch.equal(back.exponents, q.exponents)
    assert back.in_features == k


def test_plane_shapes_and_sizes():
    q = sefp.quantize(torch.randn(3, 130))
    p = packing.pack(q)
    g = 3
    assert p.p0.shape == (3, g * 32) and p.p1.shape == (3, g * 16)
    assert p.p2.shape == (3, g * 16) and p.p3.shape == (3, g * 8)
    assert all(t.dtype == torch.uint8 and t.is_contiguous() for t in p.planes())
    # 9.125 bits per padded weight, exactly as at rest
    assert p.nbytes() * 8 == 3 * 192 * sefp.BITS_PER_WEIGHT_AT_REST


def test_documented_bit_positions():
    """Pin the layout of runtime_ops/README.md: kernels depend on it."""
    signs = torch.zeros(1, 64, dtype=torch.uint8)
    mags = torch.zeros(1, 64, dtype=torch.uint8)
    signs[0, 33] = 1
    mags[0, 33] = 0b101_00_00_0  # top 3 bits of element 33 -> high nibble of p0 byte 1
    mags[0, 17] = 0b000_11_00_0  # p1 field of element 17 = 3 -> p1 byte 1, bits 2..3
    mags[0, 50] = 0b000_00_10_0  # p2 field of element 50 = 2 -> p2 byte 2, bits 6..7
    mags[0, 13] = 0b000_00_00_1  # lsb of element 13 -> p3 byte 5, bit 1
    p = packing.pack(sefp.SEFPWeight(signs, mags, torch.zeros(1, 1, dtype=torch.int8), 64))
    assert p.p0[0, 1].item() == (0b1101 << 4)
    assert p.p1[0, 1].item() == (3 << 2)
    assert p.p2[0, 2].item() == (2 << 6)
    assert p.p3[0, 5].item() == (1 << 1)
    assert int(p.p0.sum() + p.p1.sum() + p.p2.sum() + p.p3.sum()) == (0b1101 << 4) + (3 << 2) + (2 << 6) + 2


@pytest.mark.parametrize(
    "bits,planes,bpw",
    [
        (3, ("p0",), 4.125),
        (4, ("p0", "p1"), 6.125),
        (5, ("p0", "p1"), 6.125),
        (6, ("p0", "p1", "p2"), 8.125),
        (7, ("p0", "p1", "p2"), 8.125),
        (8, ("p0", "p1", "p2", "p3"), 9.125),
    ],
)
def test_planes_needed(bits, planes, bpw):
    assert packing.planes_needed(bits) == planes
    assert packing.bytes_per_weight_read(bits) * 8 == bpw


def test_precision_reads_only_its_planes():
    """Zeroing the planes a precision does not read leaves its dequantized weight unchanged."""
    q = sefp.quantize(torch.randn(4, 128))
    p = packing.pack(q)
    for bits in sefp.SUPPORTED_BITS:
        keep = packing.planes_needed(bits)
        planes = [t if name in keep else torch.zeros_like(t) for name, t in zip(packing.PLANE_NAMES, p.planes())]
        w = packing.unpack(*planes, p.exponents, p.in_features).dequantize(bits)
        assert torch.equal(w, q.dequantize(bits))


def test_check_planes_rejects_mismatch():
    p = packing.pack(sefp.quantize(torch.randn(2, 64)))
    with pytest.raises(ValueError, match="p1"):
        packing.check_planes(p.p0, p.p1[:, :8], p.p2, p.p3, p.exponents)
    with pytest.raises(ValueError, match="exponents"):
        packing.check_planes(p.p0, p.p1, p.p2, p.p3, p.exponents.to(torch.int32))


def test_plane_table_agrees_with_the_native_header():
    """The C++ kernels read the plane layout from ONE header (runtime_ops/csrc/core/sefp_format.h); it must
    say what this module's tables say."""
    import re

    from otaro_export.runtime_ops.build import CSRC

    text = (CSRC / "core" / "sefp_format.h").read_text()

    def array(name):
        match = re.search(rf"{name}\[kNumPlanes\]\s*=\s*\{{([^}}]*)\}}", text)
        assert match, f"{name} not found in sefp_format.h"
        return [int(v) for v in match.group(1).split(",")]

    def scalar(name):
        match = re.search(rf"\b{name}\s*=\s*(\d+)\s*;", text)
        assert match, f"{name} not found in sefp_format.h"
        return int(match.group(1))

    assert array("kPlaneBytesPerGroup") == [packing.PLANE_BYTES_PER_GROUP[p] for p in packing.PLANE_NAMES]
    assert array("kPlaneMinBits") == [packing.PLANE_MIN_BITS[p] for p in packing.PLANE_NAMES]
    assert scalar("kNumPlanes") == len(packing.PLANE_NAMES)
    assert scalar("kGroupSize") == sefp.GROUP_SIZE
    assert (scalar("kMinBits"), scalar("kMaxBits")) == (sefp.SUPPORTED_BITS[0], sefp.SUPPORTED_BITS[-1])
    assert scalar("kLevelsCols") == sefp.LEVELS_SHAPE[1]
