"""Independent numpy reference of the SEFP format (DESIGN.md section 2).

Written from the spec alone, without importing :mod:`otaro_export.sefp`, so
that tests can cross-check the torch implementation bit for bit. Slow and
simple on purpose: a loop-free but literal reading of the spec.
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


def dequantize(signs: np.ndarray, mags: np.ndarray, exps: np.ndarray, in_features: int, bits: int) -> np.ndarray:
    if bits not in range(3, 9):
        raise ValueError(f"bits must be in 3..8, got {bits}")
    n, kp = mags.shape
    qk = (mags & np.uint8((0xFF << (8 - bits)) & 0xFF)).astype(np.float64)
    scale = np.ldexp(1.0, exps.astype(np.int64) - 7)
    vals = qk.reshape(n, kp // GROUP, GROUP) * scale[..., None]
    vals = np.where(signs.reshape(vals.shape) == 1, -vals, vals)
    return vals.reshape(n, kp)[:, :in_features].astype(np.float32)


def linear(x: np.ndarray, w: np.ndarray, bits: int, bias: np.ndarray | None = None) -> np.ndarray:
    """``x @ W_k^T + b`` in float64, for kernel tolerance checks."""
    s, q, e = quantize(w)
    wk = dequantize(s, q, e, w.shape[1], bits).astype(np.float64)
    y = np.asarray(x, dtype=np.float64) @ wk.T
    if bias is not None:
        y = y + bias
    return y
