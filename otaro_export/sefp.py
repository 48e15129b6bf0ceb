"""SEFP: Shared Exponent Floating Point (docs/FORMAT.md §1-§3, normative).

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

import operator
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
    if isinstance(bits, bool) or type(bits).__name__ == "bool_":
        raise InvalidBitsError(f"bits must be an int in 3..8, got {bits!r}")
    try:
        bits = operator.index(bits)  # any integer type: int, numpy.int64, ...
    except TypeError:
        raise InvalidBitsError(f"bits must be an int in 3..8, got {bits!r}") from None
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


#: shape of a reconstruction table: one row per precision (k - 3), 2**8 entries wide
LEVELS_SHAPE = (len(SUPPORTED_BITS), 1 << STORED_MANTISSA_BITS)
#: reconstruction rules every consumer implements (docs/FORMAT.md §3); ``floor`` is the paper's
RECONSTRUCTION_RULES = ("floor", "center", "fitted")


def floor_levels() -> torch.Tensor:
    """The paper's rule as a table: level j of E5Mk is ``j * 2**(8-k)`` M8 steps (the interval's bottom)."""
    return _affine_levels(0.0)


def center_levels() -> torch.Tensor:
    """Middle of each truncation interval, ``(j + 1/2) * 2**(8-k)`` M8 steps; q_k = 0 too, signed by the sign bit."""
    return _affine_levels(0.5)


def _affine_levels(offset: float) -> torch.Tensor:
    levels = torch.zeros(LEVELS_SHAPE, dtype=torch.float32)
    for row, k in enumerate(SUPPORTED_BITS):
        j = torch.arange(1 << k, dtype=torch.float32)
        levels[row, : 1 << k] = (j + offset) * float(1 << (STORED_MANTISSA_BITS - k))
    return levels


def check_levels(levels: torch.Tensor, name: str = "levels") -> torch.Tensor:
    """Validate a reconstruction table (float32 [6, 256], finite, >= 0, zero past 2**k); returns it."""
    if not isinstance(levels, torch.Tensor) or levels.dtype != torch.float32 or tuple(levels.shape) != LEVELS_SHAPE:
        desc = f"{levels.dtype} {list(levels.shape)}" if isinstance(levels, torch.Tensor) else type(levels).__name__
        raise ValueError(f"{name}: a reconstruction table must be float32 {list(LEVELS_SHAPE)}, got {desc}")
    if not bool(torch.isfinite(levels).all()) or bool((levels < 0).any()):
        raise ValueError(f"{name}: reconstruction levels must be finite and >= 0")
    for row, k in enumerate(SUPPORTED_BITS):
        if bool(levels[row, 1 << k :].any()):
            raise ValueError(f"{name}: row {row} (E5M{k}) has entries past its {1 << k} levels")
    return levels


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

    def dequantize(self, bits: int, levels: torch.Tensor | None = None) -> torch.Tensor:
        """Float32 ``[N, K]`` weight at precision E5M``bits``, exact.

        ``levels`` is a reconstruction table (docs/FORMAT.md §3); ``None`` is the
        paper's ``floor`` rule, ``value = (-1)**s * q_k * 2**(e-7)``.
        """
        bits = check_bits(bits)
        row = (floor_levels() if levels is None else check_levels(levels))[bits - SUPPORTED_BITS[0], : 1 << bits]
        # ``floor``'s level j is j * 2**(8-k) M8 steps, i.e. q_k itself: one table serves both cases. Levels
        # 0..2**k-1 then their negatives, a negative weight's index offset by 2**k: one gather gives the signed
        # level (-(l * s) == (-l) * s exactly, -0.0 included), then one exact power-of-two scaling.
        signed = torch.cat([row, -row])
        index = (self.magnitudes >> (STORED_MANTISSA_BITS - bits)).to(torch.int32)
        index.add_(self.signs, alpha=1 << bits)
        n, k_pad = index.shape
        w = torch.index_select(signed, 0, index.view(-1)).view(n, k_pad // GROUP_SIZE, GROUP_SIZE)
        w.mul_(exact_pow2(self.exponents.to(torch.int32) - (STORED_MANTISSA_BITS - 1)).unsqueeze(-1))
        w = w.view(n, k_pad)
        return w if k_pad == self.in_features else w[:, : self.in_features].contiguous()

    def nbytes_at_rest(self) -> float:
        """Storage of the M8 model in bytes: 9.125 bits per (padded) weight."""
        return self.magnitudes.numel() * BITS_PER_WEIGHT_AT_REST / 8


#: encoder exponent rules: ``floor`` is the paper's ``floor(log2 max|w|)``; ``search`` may pick one lower per group
EXPONENT_RULES = ("floor", "search")
#: weight of each precision's error (E5M3..E5M8) in the ``search`` objective, relative to the layer's own error there
SEARCH_PRECISION_WEIGHTS: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def check_exponent_rule(rule: str) -> str:
    if rule not in EXPONENT_RULES:
        raise ValueError(f"unknown exponent rule {rule!r}: choose one of {', '.join(EXPONENT_RULES)}")
    return rule


def _magnitudes(groups: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``q = min(255, floor(|w| * 2**(7-e)))`` for ``[..., 64]`` groups and per-group exponents (saturating)."""
    scale = exact_pow2((STORED_MANTISSA_BITS - 1) - e.to(torch.int32)).unsqueeze(-1)
    # |w| * 2**(7-e) is exact (power-of-two scaling); floor truncates toward zero.
    return torch.floor(groups.abs() * scale).clamp_(max=255).to(torch.uint8)


def quantize(
    w: torch.Tensor,
    name: str = "weight",
    exponent_rule: str = "floor",
    *,
    levels: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    precision_weights: tuple[float, ...] = SEARCH_PRECISION_WEIGHTS,
) -> SEFPWeight:
    """Quantize a float ``[N, K]`` weight to SEFP (E5M8 stored; E5M3..M8 by truncation).

    ``name`` is used in error messages (NaN/Inf weights name their tensor).
    ``exponent_rule="floor"`` is the paper's encoder. ``"search"`` lets a group take
    ``floor(log2 max) - 1`` (its largest magnitudes then saturate at q = 255) where that
    lowers the precision-weighted error of :func:`search_exponents`, decoded with
    ``levels`` (default: :func:`center_levels`) and weighted per input column by
    ``importance`` (``[K]``, e.g. E[x_i^2] of the layer's input; default uniform).
    The decoder and the nesting are unchanged whatever the rule.
    """
    w = _check_weight(w, name)
    check_exponent_rule(exponent_rule)
    n, k = w.shape
    groups = _grouped(w)
    e = shared_exponents(groups)
    if exponent_rule == "search":
        weights = padded_importance(importance, k)
        e = search_exponents(groups, e, levels=levels, importance=weights, precision_weights=precision_weights)
    q = _magnitudes(groups, e)
    signs = (groups < 0).to(torch.uint8)
    return SEFPWeight(
        signs=signs.reshape(n, -1),
        magnitudes=q.reshape(n, -1),
        exponents=e,
        in_features=k,
    )


def padded_importance(importance: torch.Tensor | None, in_features: int) -> torch.Tensor:
    """Per-column error weights ``[K_pad]`` (float32): ``importance`` (default ones), zero on the padding."""
    k_pad = padded_in_features(in_features)
    if importance is None:
        importance = torch.ones(in_features, dtype=torch.float32)
    importance = importance.detach().to(torch.float32).reshape(-1)
    if importance.numel() != in_features:
        raise ValueError(f"importance has {importance.numel()} entries, the weight has {in_features} input features")
    if not bool(torch.isfinite(importance).all()) or bool((importance < 0).any()):
        raise ValueError("importance must be finite and >= 0")
    return torch.nn.functional.pad(importance, (0, k_pad - in_features))


def _group_errors(groups: torch.Tensor, e: torch.Tensor, table: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Importance-weighted squared error per group at every precision: ``[6, N, G]`` (float64).

    ``table`` ``[256, 6]``: the value of every stored q at each precision, in M8 steps
    (``levels[k-3, q >> (8-k)]``): one gather serves all six precisions.
    """
    scale = exact_pow2((STORED_MANTISSA_BITS - 1) - e.to(torch.int32)).unsqueeze(-1)
    scaled = groups.abs().mul_(scale)  # |w| * 2**(7-e) in M8 steps, exact (as _magnitudes computes it)
    q = torch.floor(scaled).clamp_(max=255).to(torch.int32)  # _magnitudes(groups, e)
    # [N, G, 64, 6] in M8 steps: the value of q at every precision, then its residual, squared and weighted in
    # place (the same float32 operations on the same values as scaled - table[q], one buffer instead of three)
    residual = torch.index_select(table, 0, q.view(-1)).view(*q.shape, table.shape[1])
    torch.sub(scaled.unsqueeze(-1), residual, out=residual)
    err = residual.square_().mul_(importance.unsqueeze(-1)).sum(-2)  # [N, G, 6]
    step2 = exact_pow2(2 * (e.to(torch.int32) - (STORED_MANTISSA_BITS - 1))).unsqueeze(-1)
    return (err.to(torch.float64) * step2.to(torch.float64)).permute(2, 0, 1)


def _value_table(levels: torch.Tensor) -> torch.Tensor:
    """``[256, 6]``: the level every stored q decodes to at E5M3..E5M8 (M8 steps)."""
    q = torch.arange(1 << STORED_MANTISSA_BITS)
    cols = [levels[row][q >> (STORED_MANTISSA_BITS - bits)] for row, bits in enumerate(SUPPORTED_BITS)]
    return torch.stack(cols, dim=1).to(torch.float32)


def search_exponents(
    groups: torch.Tensor,
    e0: torch.Tensor,
    levels: torch.Tensor | None = None,
    importance: torch.Tensor | None = None,
    precision_weights: tuple[float, ...] = SEARCH_PRECISION_WEIGHTS,
    rows_per_chunk: int = 1024,
) -> torch.Tensor:
    """Per group, ``e0`` or ``e0 - 1``, whichever has the lower precision-weighted error.

    Error at precision k: ``sum_i importance_i * (|w_i| - level_k(q_i) * 2**(e-7))**2`` over the
    group. The objective sums ``precision_weights[k] * err_k / E_k`` over k, where ``E_k`` is the
    whole tensor's error at k with ``e0``: each precision counts relative to its own error, so a
    choice that halves E5M3's error but multiplies E5M8's by ten is refused (to first order it
    minimises the weighted sum of log errors). Ties keep ``e0``; all-zero groups keep ``e0``.
    """
    table = _value_table(center_levels() if levels is None else check_levels(levels))
    n, g, size = groups.shape
    if importance is None:
        importance = torch.ones(g * size, dtype=torch.float32)
    importance = importance.to(torch.float32).reshape(1, g, size)  # [K_pad], zero on padding
    if len(precision_weights) != len(SUPPORTED_BITS):
        raise ValueError(f"precision_weights needs one weight per precision {list(SUPPORTED_BITS)}")
    lower = (e0.to(torch.int32) - 1).clamp(min=EXPONENT_MIN).to(torch.int8)
    err0 = torch.empty(len(SUPPORTED_BITS), n, g, dtype=torch.float64)
    err1 = torch.empty_like(err0)
    for start in range(0, n, rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        err0[:, rows] = _group_errors(groups[rows], e0[rows], table, importance)
        err1[:, rows] = _group_errors(groups[rows], lower[rows], table, importance)
    total = err0.sum(dim=(1, 2)).clamp(min=torch.finfo(torch.float64).tiny)
    weight = torch.tensor(precision_weights, dtype=torch.float64) / total
    score0 = torch.einsum("k,kng->ng", weight, err0)
    score1 = torch.einsum("k,kng->ng", weight, err1)
    return torch.where((score1 < score0) & (lower < e0), lower, e0)


def fake_quantize(
    w: torch.Tensor, bits: int, levels: torch.Tensor | None = None, exponents: torch.Tensor | None = None
) -> torch.Tensor:
    """Quantize-dequantize ``w`` straight to E5M``bits`` (no uint8 round trip).

    Computes ``(-1)**s * min(2**k - 1, floor(|w| * 2**(k-1-e))) * 2**(e-k+1)``
    in the input's device and float32. By the nesting property this equals
    ``quantize(w).dequantize(bits)``; the trainer uses it on every step, so it
    stays on the weight's device and avoids materialising uint8 planes.
    ``levels`` (a reconstruction table, docs/FORMAT.md §3) replaces the level
    ``j`` by ``levels[k-3, j]`` M8 steps, and ``exponents`` (``[N, K_pad/64]``,
    e.g. from ``quantize(..., exponent_rule="search")``) replaces the floor rule's:
    the result then equals ``quantize(...).dequantize(bits, levels)`` of that encoding.
    Not differentiable by itself: wrap it with a straight-through estimator.
    """
    bits = check_bits(bits)
    # A sum is finite only if every term is: one read, no temporary; the exact test only when it is not.
    if not bool(torch.isfinite(w.detach().sum())) and not bool(torch.isfinite(w).all()):
        raise NonFiniteWeightError("fake_quantize: weight contains NaN or Inf")
    if levels is None and exponents is None:
        return _grid_values(w.detach().to(torch.float32), bits, torch.floor).to(w.dtype)
    w32 = w.detach().to(torch.float32)
    n, k = w32.shape
    groups = _grouped(w32)
    e = shared_exponents(groups) if exponents is None else exponents.to(groups.device)
    if tuple(e.shape) != tuple(groups.shape[:2]):
        raise ValueError(f"exponents must be {list(groups.shape[:2])} for this weight, got {list(e.shape)}")
    e = e.to(torch.int32).unsqueeze(-1)
    # Levels 0..2**k-1 of the row, then their negatives: a negative weight's index is offset by 2**k, so one
    # gather gives the signed value (-(l * s) == (-l) * s exactly; -0.0 is not < 0, as the sign bit encodes it).
    row = (floor_levels() if levels is None else check_levels(levels))[bits - SUPPORTED_BITS[0], : 1 << bits]
    signed = torch.cat([row, -row]).to(groups.device)
    # q >> (8-k) of the stored magnitude, straight from |w| (saturating like the encoder): |w| * 2**(k-1-e) is
    # >= 0, so clamping first and converting to int (truncation) is the floor of the clamped value
    scaled = groups.abs().mul_(exact_pow2((bits - 1) - e)).clamp_(max=(1 << bits) - 1)
    index = scaled.to(torch.int32)
    index.add_((groups < 0).view(torch.uint8), alpha=1 << bits)
    # index_select is the fastest CPU gather; it writes into the spent float buffer (one allocation fewer)
    out = torch.index_select(signed, 0, index.view(-1), out=scaled.view(-1)).view(index.shape)
    out.mul_(exact_pow2(e - (STORED_MANTISSA_BITS - 1)))
    return out.reshape(n, -1)[:, :k].to(w.dtype)


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
