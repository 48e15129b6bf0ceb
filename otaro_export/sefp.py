"""SEFP: Shared Exponent Floating Point (DESIGN.md section 2, normative).

This module is the single home of the format. Kernels, exporters and the
trainer call it; nothing else re-derives the bit layout.

Summary of the spec, for a float weight ``W`` of shape ``[N, K]``:

* rows are split into groups of ``GROUP_SIZE = 64`` along K (zero-padded);
* each group shares ``e = clamp(floor(log2(max|w|)), -15, 16)`` (``-15`` for
  an all-zero group), stored as int8;
* each weight keeps a sign bit and ``q = min(255, floor(|w| * 2**(7 - e)))``;
* precision E5Mk keeps the top k bits of ``q``:
  ``value = (-1)**s * (q & (0xFF << (8 - k))) * 2**(e - 7)``, exact in float32.

Lower precisions are pure truncations of the stored 8-bit mantissas, so one
stored model serves E5M3..E5M8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from otaro_export.errors import InvalidBitsError, NonFiniteWeightError

GROUP_SIZE = 64
EXPONENT_MIN = -15
EXPONENT_MAX = 16
STORED_MANTISSA_BITS = 8
SUPPORTED_BITS: tuple[int, ...] = (3, 4, 5, 6, 7, 8)
#: bits per weight at rest for the stored M8 model: sign + 8 + 8/64 exponent bits.
BITS_PER_WEIGHT_AT_REST = 1 + STORED_MANTISSA_BITS + 8 / GROUP_SIZE

# 2**n for every exponent offset the format can produce, built from Python
# floats so each entry is an exact power of two in float32 (no pow() rounding).
# Every use stays within [-22, 22]; the table is a little wider on purpose.
_POW2_TABLE_MIN = -32
_POW2_TABLE_MAX = 32


def check_bits(bits: int | torch.Tensor) -> int:
    """Return ``bits`` as an int, or raise :class:`InvalidBitsError` if it is not 3..8."""
    if isinstance(bits, torch.Tensor):
        if bits.numel() != 1 or bits.dtype.is_floating_point or bits.dtype == torch.bool:
            raise InvalidBitsError(
                f"bits must be a single integer, got a {bits.dtype} tensor of shape {tuple(bits.shape)}"
            )
        bits = int(bits.item())
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise InvalidBitsError(f"bits must be an int in 3..8, got {bits!r}")
    if bits not in SUPPORTED_BITS:
        raise InvalidBitsError(f"bits must be one of {list(SUPPORTED_BITS)} (E5M3..E5M8), got {bits}")
    return bits


def mantissa_mask(bits: int) -> int:
    """The uint8 AND-mask that keeps the top ``bits`` mantissa bits."""
    return (0xFF << (STORED_MANTISSA_BITS - check_bits(bits))) & 0xFF


def padded_in_features(in_features: int) -> int:
    return -(-in_features // GROUP_SIZE) * GROUP_SIZE


def exact_pow2(exponents: torch.Tensor) -> torch.Tensor:
    """``2.0 ** exponents`` as exact float32 for integer tensors in the format's range."""
    table = torch.tensor(
        [2.0**n for n in range(_POW2_TABLE_MIN, _POW2_TABLE_MAX + 1)],
        dtype=torch.float32,
        device=exponents.device,
    )
    return table[(exponents.to(torch.int64) - _POW2_TABLE_MIN)]


def _check_weight(w: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(w).__name__}")
    if w.dim() != 2:
        raise ValueError(f"{name}: SEFP quantizes 2-D [out, in] weights, got shape {tuple(w.shape)}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point weight, got {w.dtype}")
    if w.shape[1] == 0:
        raise ValueError(f"{name}: weight has no input features")
    w = w.detach().to(torch.float32)
    finite = torch.isfinite(w)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        kind = "NaN" if bool(torch.isnan(w).any()) else "Inf"
        count = int((~finite).sum())
        raise NonFiniteWeightError(
            f"{name}: weight contains {count} non-finite value(s) ({kind}), first at index {bad}; "
            "SEFP cannot represent NaN or Inf"
        )
    return w


def _grouped(w: torch.Tensor) -> torch.Tensor:
    """Zero-pad K to a multiple of 64 and view as ``[N, G, 64]``."""
    n, k = w.shape
    k_pad = padded_in_features(k)
    if k_pad != k:
        w = torch.nn.functional.pad(w, (0, k_pad - k))
    return w.reshape(n, k_pad // GROUP_SIZE, GROUP_SIZE)


def shared_exponents(groups: torch.Tensor) -> torch.Tensor:
    """Per-group exponent ``clamp(floor(log2(max|w|)), -15, 16)``; -15 for zero groups."""
    amax = groups.abs().amax(dim=-1)
    # frexp: m = f * 2**p with f in [0.5, 1)  =>  floor(log2 m) = p - 1, exactly.
    _, p = torch.frexp(amax)
    e = (p.to(torch.int32) - 1).clamp(EXPONENT_MIN, EXPONENT_MAX)
    e = torch.where(amax == 0, torch.full_like(e, EXPONENT_MIN), e)
    return e.to(torch.int8)


@dataclass
class SEFPWeight:
    """One weight matrix in SEFP storage (the stored E5M8 model)."""

    signs: torch.Tensor  # uint8 {0, 1}, [N, K_pad]
    magnitudes: torch.Tensor  # uint8, [N, K_pad]
    exponents: torch.Tensor  # int8 (unbiased), [N, K_pad / 64]
    in_features: int

    @property
    def out_features(self) -> int:
        return int(self.magnitudes.shape[0])

    @property
    def padded_in_features(self) -> int:
        return int(self.magnitudes.shape[1])

    def truncated_magnitudes(self, bits: int) -> torch.Tensor:
        """``q_k = q AND (0xFF << (8 - k))``: precision k from the stored M8 data."""
        return torch.bitwise_and(self.magnitudes, mantissa_mask(bits))

    def dequantize(self, bits: int) -> torch.Tensor:
        """Float32 ``[N, K]`` weight at precision E5M``bits``, exact."""
        q = self.truncated_magnitudes(bits).to(torch.float32)
        n, k_pad = q.shape
        scale = exact_pow2(self.exponents.to(torch.int32) - (STORED_MANTISSA_BITS - 1))
        w = q.reshape(n, k_pad // GROUP_SIZE, GROUP_SIZE) * scale.unsqueeze(-1)
        w = w.reshape(n, k_pad)
        w = torch.where(self.signs.bool(), -w, w)
        return w[:, : self.in_features].contiguous()

    def nbytes_at_rest(self) -> float:
        """Storage of the M8 model in bytes: 9.125 bits per (padded) weight."""
        return self.magnitudes.numel() * BITS_PER_WEIGHT_AT_REST / 8


def quantize(w: torch.Tensor, name: str = "weight") -> SEFPWeight:
    """Quantize a float ``[N, K]`` weight to SEFP (E5M8 stored; E5M3..M8 by truncation).

    ``name`` is used in error messages (NaN/Inf weights name their tensor).
    """
    w = _check_weight(w, name)
    n, k = w.shape
    groups = _grouped(w)
    e = shared_exponents(groups)
    scale = exact_pow2((STORED_MANTISSA_BITS - 1) - e.to(torch.int32)).unsqueeze(-1)
    # |w| * 2**(7-e) is exact (power-of-two scaling); floor truncates toward zero.
    q = torch.floor(groups.abs() * scale).clamp_(max=255).to(torch.uint8)
    signs = (groups < 0).to(torch.uint8)
    return SEFPWeight(
        signs=signs.reshape(n, -1),
        magnitudes=q.reshape(n, -1),
        exponents=e,
        in_features=k,
    )


def fake_quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Quantize-dequantize ``w`` straight to E5M``bits`` (no uint8 round trip).

    Computes ``(-1)**s * min(2**k - 1, floor(|w| * 2**(k-1-e))) * 2**(e-k+1)``
    in the input's device and float32. By the nesting property this equals
    ``quantize(w).dequantize(bits)``; the trainer uses it on every step, so it
    stays on the weight's device and avoids materialising uint8 planes.
    Not differentiable by itself: wrap it with a straight-through estimator.
    """
    bits = check_bits(bits)
    if not torch.isfinite(w).all():
        raise NonFiniteWeightError("fake_quantize: weight contains NaN or Inf")
    return _grid_values(w.detach().to(torch.float32), bits, torch.floor).to(w.dtype)


def _grid_values(w32: torch.Tensor, bits: int, to_level) -> torch.Tensor:
    """``w32`` on the E5M``bits`` grid: ``to_level`` maps ``|w| / step`` to an integer level.

    ``torch.floor`` is the format (truncation, nested across precisions); the
    tuning experiment's reference row passes ``torch.round`` to measure what
    truncation costs, on the same groups, exponents and steps.
    """
    n, k = w32.shape
    groups = _grouped(w32)
    e = shared_exponents(groups).to(torch.int32).unsqueeze(-1)
    q = to_level(groups.abs() * exact_pow2((bits - 1) - e)).clamp_(max=(1 << bits) - 1)
    out = torch.copysign(q * exact_pow2(e - (bits - 1)), groups)
    # A negative weight that truncates to magnitude 0 gives -0.0 here, exactly
    # as the stored format does (sign 1, magnitude 0).
    return out.reshape(n, -1)[:, :k]


def weight_sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB (higher is better)."""
    ref = reference.detach().to(torch.float64)
    noise = (ref - approx.detach().to(torch.float64)).pow(2).sum()
    signal = ref.pow(2).sum()
    if noise == 0:
        return float("inf")
    return float(10 * torch.log10(signal / noise))
