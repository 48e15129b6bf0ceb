"""Plane packing of SEFP weights for kernels (a layer on top of :mod:`otaro_export.sefp`).

The stored M8 model is split into four bit planes ``p0..p3`` plus the int8
exponents, so that precision k reads only the bytes it needs (less memory
traffic, and fewer resident pages under mmap). The layout is specified in
docs/FORMAT.md §4: :func:`pack` and :func:`unpack` implement it, and
``PLANE_BYTES_PER_GROUP`` / ``PLANE_MIN_BITS`` are its tables.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from otaro_export.sefp import GROUP_SIZE, SEFPWeight, check_bits

PLANE_NAMES = ("p0", "p1", "p2", "p3")
#: bytes each plane holds per group of 64 weights (the native kernels' twin: runtime_ops/csrc/core/sefp_format.h)
PLANE_BYTES_PER_GROUP = {"p0": 32, "p1": 16, "p2": 16, "p3": 8}
#: the lowest precision that reads each plane
PLANE_MIN_BITS = {"p0": 3, "p1": 4, "p2": 6, "p3": 8}
PACKING_VERSION = 1


def planes_needed(bits: int) -> tuple[str, ...]:
    """Names of the planes precision ``bits`` reads."""
    bits = check_bits(bits)
    return tuple(p for p in PLANE_NAMES if PLANE_MIN_BITS[p] <= bits)


def bytes_per_weight_read(bits: int) -> float:
    """Bytes per weight a kernel reads at precision ``bits`` (exponents included)."""
    return (sum(PLANE_BYTES_PER_GROUP[p] for p in planes_needed(bits)) + 1) / GROUP_SIZE


@dataclass
class PackedSEFP:
    """A SEFP weight in kernel layout. All tensors are contiguous uint8/int8."""

    p0: torch.Tensor  # uint8 [N, G*32]
    p1: torch.Tensor  # uint8 [N, G*16]
    p2: torch.Tensor  # uint8 [N, G*16]
    p3: torch.Tensor  # uint8 [N, G*8]
    exponents: torch.Tensor  # int8 [N, G]
    in_features: int

    @property
    def out_features(self) -> int:
        return int(self.exponents.shape[0])

    @property
    def num_groups(self) -> int:
        return int(self.exponents.shape[1])

    def planes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (self.p0, self.p1, self.p2, self.p3)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.planes(), self.exponents))

    def unpack(self) -> SEFPWeight:
        return unpack(self.p0, self.p1, self.p2, self.p3, self.exponents, self.in_features)


def _fields(groups: torch.Tensor, lanes: int) -> torch.Tensor:
    """View ``[N, G, 64]`` as ``[N, G, 64 // lanes, lanes]``: element i + lanes*j at [..., j, i]."""
    n, g, _ = groups.shape
    return groups.reshape(n, g, GROUP_SIZE // lanes, lanes)


def pack(w: SEFPWeight) -> PackedSEFP:
    """Split a :class:`SEFPWeight` into the four planes of docs/FORMAT.md §4."""
    n, k_pad = w.magnitudes.shape
    g = k_pad // GROUP_SIZE
    # uint8 throughout: every field and every packed byte fits in 8 bits (a quarter of int32's memory traffic)
    q = w.magnitudes.reshape(n, g, GROUP_SIZE).to(torch.uint8)
    s = w.signs.reshape(n, g, GROUP_SIZE).to(torch.uint8)

    code = _fields((s << 3) | (q >> 5), 32)  # [N, G, 2, 32]
    p0 = code[:, :, 0] | (code[:, :, 1] << 4)

    def two_bit_plane(field: torch.Tensor) -> torch.Tensor:
        f = _fields(field, 16)  # [N, G, 4, 16]
        return f[:, :, 0] | (f[:, :, 1] << 2) | (f[:, :, 2] << 4) | (f[:, :, 3] << 6)

    p1 = two_bit_plane((q >> 3) & 3)
    p2 = two_bit_plane((q >> 1) & 3)
    lsb = _fields(q & 1, 8)  # [N, G, 8, 8]
    p3 = lsb[:, :, 0].clone()
    for j in range(1, 8):
        p3 |= lsb[:, :, j] << j

    def as_plane(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, -1).contiguous()

    return PackedSEFP(
        p0=as_plane(p0),
        p1=as_plane(p1),
        p2=as_plane(p2),
        p3=as_plane(p3),
        exponents=w.exponents.contiguous(),
        in_features=w.in_features,
    )


def unpack(
    p0: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    p3: torch.Tensor,
    exponents: torch.Tensor,
    in_features: int,
) -> SEFPWeight:
    """Inverse of :func:`pack` (exact)."""
    check_planes(p0, p1, p2, p3, exponents)
    n, g = exponents.shape
    b0 = p0.to(torch.int32).reshape(n, g, 1, 32)
    code = torch.cat([b0 & 0xF, b0 >> 4], dim=2).reshape(n, g, GROUP_SIZE)

    def two_bit_fields(plane: torch.Tensor) -> torch.Tensor:
        b = plane.to(torch.int32).reshape(n, g, 1, 16)
        return torch.cat([(b >> (2 * j)) & 3 for j in range(4)], dim=2).reshape(n, g, GROUP_SIZE)

    b3 = p3.to(torch.int32).reshape(n, g, 1, 8)
    lsb = torch.cat([(b3 >> j) & 1 for j in range(8)], dim=2).reshape(n, g, GROUP_SIZE)
    q = ((code & 7) << 5) | (two_bit_fields(p1) << 3) | (two_bit_fields(p2) << 1) | lsb
    return SEFPWeight(
        signs=(code >> 3).to(torch.uint8).reshape(n, -1),
        magnitudes=q.to(torch.uint8).reshape(n, -1),
        exponents=exponents,
        in_features=in_features,
    )


def check_planes(
    p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor, p3: torch.Tensor, exponents: torch.Tensor
) -> None:
    """Raise ValueError unless the planes have the dtypes and shapes of one weight."""
    if exponents.dim() != 2 or exponents.dtype != torch.int8:
        raise ValueError(f"exponents must be int8 [N, G], got {exponents.dtype} {tuple(exponents.shape)}")
    n, g = exponents.shape
    for name, plane in zip(PLANE_NAMES, (p0, p1, p2, p3)):
        want = (n, g * PLANE_BYTES_PER_GROUP[name])
        if plane.dtype != torch.uint8 or tuple(plane.shape) != want:
            raise ValueError(
                f"SEFP plane {name} must be uint8 {list(want)} for {n}x{g} groups, "
                f"got {plane.dtype} {list(plane.shape)}"
            )
