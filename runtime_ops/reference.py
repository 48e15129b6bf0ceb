"""Independent numpy reference of the SEFP format (docs/FORMAT.md §1, §3, §5).

Written from the spec alone, without importing :mod:`otaro_export.sefp`, so
that tests can cross-check the torch implementation bit for bit. Slow and
simple on purpose: a loop-free but literal reading of the spec.

Reconstruction rules are tables ``levels`` float32 ``[6, 256]``: row ``k - 3``
holds the magnitude of level ``j`` of E5Mk in M8 steps, and a weight's value is
``(-1)^s * levels[k - 3, q_k >> (8 - k)] * 2^(e - 7)``. ``None`` is the paper's
``floor`` rule, ``value = (-1)^s * q_k * 2^(e - 7)``.
"""

from __future__ import annotations

import numpy as np

GROUP = 64
E_MIN, E_MAX = -15, 16


def quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(signs uint8 [N,Kp], magnitudes uint8 [N,Kp], exponents int8 [N,Kp/64])``."""
    w = np.asarray(w, dtype=np.float32)
    if not np.all(np.isfinite(w)):
        raise ValueError("weight contains NaN or Inf")
    n, k = w.shape
    kp = ((k + GROUP - 1) // GROUP) * GROUP
    padded = np.zeros((n, kp), dtype=np.float32)
    padded[:, :k] = w
    groups = padded.reshape(n, kp // GROUP, GROUP)
    m = np.abs(groups).max(axis=-1)
    _, p = np.frexp(m)  # m = f * 2**p, f in [0.5, 1)
    e = np.clip(p.astype(np.int64) - 1, E_MIN, E_MAX)
    e = np.where(m == 0, E_MIN, e)
    # float64 holds |w| * 2**(7-e) exactly for every float32 |w| and e in range
    scaled = np.abs(groups).astype(np.float64) * np.ldexp(1.0, 7 - e)[..., None]
    q = np.minimum(255.0, np.floor(scaled)).astype(np.uint8)
    s = (groups < 0).astype(np.uint8)
    return s.reshape(n, kp), q.reshape(n, kp), e.astype(np.int8)


def floor_levels() -> np.ndarray:
    """The paper's rule: level j of E5Mk is the bottom of its truncation interval, j * 2^(8-k) M8 steps."""
    return _interval_levels(0.0)


def center_levels() -> np.ndarray:
    """The middle of each truncation interval, (j + 1/2) * 2^(8-k) M8 steps (q_k = 0 too, signed by s)."""
    return _interval_levels(0.5)


def _interval_levels(fraction: float) -> np.ndarray:
    levels = np.zeros((6, 256), dtype=np.float32)
    for k in range(3, 9):
        step = 2 ** (8 - k)  # one E5Mk step in M8 steps
        levels[k - 3, : 2**k] = [(j + fraction) * step for j in range(2**k)]
    return levels


def dequantize(
    signs: np.ndarray,
    mags: np.ndarray,
    exps: np.ndarray,
    in_features: int,
    bits: int,
    levels: np.ndarray | None = None,
) -> np.ndarray:
    if bits not in range(3, 9):
        raise ValueError(f"bits must be in 3..8, got {bits}")
    n, kp = mags.shape
    qk = mags & np.uint8((0xFF << (8 - bits)) & 0xFF)
    if levels is None:
        qk = qk.astype(np.float64)
    else:
        levels = np.asarray(levels)
        if levels.shape != (6, 256) or levels.dtype != np.float32:
            raise ValueError(f"levels must be float32 [6, 256], got {levels.dtype} {list(levels.shape)}")
        row = levels[bits - 3, : 2**bits].astype(np.float64)
        if not np.all(np.isfinite(row)) or np.any(row < 0):
            raise ValueError("levels must be finite and >= 0")
        qk = row[qk.astype(np.int64) // 2 ** (8 - bits)]
    scale = np.ldexp(1.0, exps.astype(np.int64) - 7)
    vals = qk.reshape(n, kp // GROUP, GROUP) * scale[..., None]
    vals = np.where(signs.reshape(vals.shape) == 1, -vals, vals)
    return vals.reshape(n, kp)[:, :in_features].astype(np.float32)


def linear(
    x: np.ndarray, w: np.ndarray, bits: int, bias: np.ndarray | None = None, levels: np.ndarray | None = None
) -> np.ndarray:
    """``x @ W_k^T + b`` in float64, for kernel tolerance checks."""
    s, q, e = quantize(w)
    wk = dequantize(s, q, e, w.shape[1], bits, levels).astype(np.float64)
    y = np.asarray(x, dtype=np.float64) @ wk.T
    if bias is not None:
        y = y + bias
    return y


def embedding(ids: np.ndarray, w: np.ndarray, bits: int, levels: np.ndarray | None = None) -> np.ndarray:
    """Rows ``ids`` of ``W_k`` (float32 ``[*ids.shape, K]``); an id outside ``[0, N)`` raises IndexError."""
    ids = np.asarray(ids)
    n = w.shape[0]
    if ids.size and (ids.min() < 0 or ids.max() >= n):
        raise IndexError(f"ids must be in [0, {n})")
    s, q, e = quantize(w)
    return dequantize(s, q, e, w.shape[1], bits, levels)[ids]
