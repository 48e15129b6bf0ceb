"""Int8 activations for low precisions (docs/FORMAT.md §9): what an SEFP linear does to its input.

An SEFP linear may run its low precisions with int8 activations: at an effective
precision ``k <= max_bits`` (``max_bits`` recorded per artifact; 0 = never) it computes
``y = fq(x) @ W_k^T + b`` instead of ``x @ W_k^T + b``. ``fq`` quantizes each block of 64
consecutive input features of each row (the blocks line up with the weight's groups;
a partial last block counts its missing features as 0) to symmetric int8:

    a = max |x| over the block                        float32
    a == 0, Inf or NaN: the block is left as it is
    q = clamp(round_half_even(x * (127 / a)), -127, 127)   (127 / a in float32)
    fq(x) = q * (a / 127)                             float32

Why: with activations on an integer grid, a kernel multiplies the integer levels of
the weights (E5M3/E5M4 levels are multiples of 32/16 M8 steps) with ``q`` in integer
dot-product instructions (x86 ``vpdpbusd`` / ``pmaddubsw``, ARM ``sdot``) and applies
the two scales once per group, which is much cheaper than decoding every weight to
float. The result equals ``fq(x) @ W_k^T`` up to float32 summation order, so this
module is the reference every runtime is tested against. Such kernels need the levels
of those precisions on the int8 grid: even integers in ``[0, 254]`` M8 steps, so that
half a level with its sign fits int8 and a pair of products fits int16 (``floor`` and
``center`` rows are; the exporter rounds ``fitted`` rows, :func:`round_levels_to_int8_grid`);
a kernel given other levels computes the same ``fq(x) @ W_k^T`` in float.
"""

from __future__ import annotations

import torch

from otaro_export.sefp import GROUP_SIZE, SUPPORTED_BITS, check_bits, floor_levels

#: the int8 grid: |q| <= 127 (symmetric: -128 is never used, so negating q cannot overflow)
QMAX = 127
#: ``max_bits`` value that turns int8 activations off
OFF = 0


def check_max_bits(max_bits: int) -> int:
    """A valid ``max_bits``: 0 (off) or a precision 3..8."""
    if (
        isinstance(max_bits, bool)
        or not isinstance(max_bits, int)
        or (max_bits != OFF and max_bits not in SUPPORTED_BITS)
    ):
        raise ValueError(
            f"int8 activations: max_bits must be 0 (off) or one of {list(SUPPORTED_BITS)}, got {max_bits!r}"
        )
    return max_bits


def applies(bits: int, max_bits: int) -> bool:
    """Whether a call at effective precision ``bits`` quantizes its activations."""
    return check_max_bits(max_bits) != OFF and check_bits(bits) <= max_bits


def fake_quantize(x: torch.Tensor) -> torch.Tensor:
    """``fq(x)`` of the module docstring over the last dim of a float32 tensor (any leading dims)."""
    if x.dtype != torch.float32:
        raise TypeError(f"int8 activations: x must be float32, got {x.dtype}")
    k = x.shape[-1]
    if k == 0 or x.numel() == 0:
        return x.clone()
    pad = -k % GROUP_SIZE
    blocks = torch.nn.functional.pad(x, (0, pad)).reshape(*x.shape[:-1], -1, GROUP_SIZE)
    a = blocks.abs().amax(dim=-1, keepdim=True)
    keep = (a == 0) | ~torch.isfinite(a)
    safe = torch.where(keep, torch.ones_like(a), a)
    inv = torch.tensor(float(QMAX), dtype=torch.float32) / safe
    q = torch.round(blocks * inv).clamp_(-QMAX, QMAX)  # torch.round: half to even
    step = safe / torch.tensor(float(QMAX), dtype=torch.float32)
    out = torch.where(keep, blocks, q * step)
    return out.reshape(*x.shape[:-1], -1)[..., :k]


#: the largest level on the int8 grid: 2 * 127 M8 steps
GRID_MAX = 2 * QMAX


def round_levels_to_int8_grid(levels: torch.Tensor, max_bits: int) -> torch.Tensor:
    """A copy of ``levels`` whose rows E5M3..E5M``max_bits`` hold even integers in [0, 254] (nearest; ties even).

    Rows above ``max_bits`` are unchanged, and so is every ``floor`` row up to E5M7 and
    ``center`` row up to E5M6 (already on the grid). What the exporter stores when int8
    activations are on: every consumer reads the same (rounded) levels, and integer kernels
    apply. The rounding moves a level by at most one M8 step (1/32 of an E5M3 step).
    """
    check_max_bits(max_bits)
    out = levels.clone()
    for row, k in enumerate(SUPPORTED_BITS):
        if k <= max_bits:
            used = out[row, : 1 << k]
            out[row, : 1 << k] = (torch.round(used / 2) * 2).clamp_(0, GRID_MAX)
    return out


def int8_grid_levels(levels: torch.Tensor | None, bits: int) -> bool:
    """Whether row E5M``bits`` of ``levels`` (None: ``floor``) is on the int8 grid (integer kernels apply)."""
    if levels is None:
        levels = floor_levels()
    row = levels[check_bits(bits) - SUPPORTED_BITS[0], : 1 << bits]
    return bool(((row == torch.round(row / 2) * 2) & (row >= 0) & (row <= GRID_MAX)).all())
