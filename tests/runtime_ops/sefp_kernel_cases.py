"""Test problems for the SEFP kernels, with references and justified tolerances.

Two kinds of case:

* exact: every group's largest |w| lies in [2, 4) (so e = 1 and one M8 step is
  2^-6), x holds integers in -3..3 and the bias multiples of 2^-6 below 2^6.
  Every reconstruction table used here holds multiples of 1/8 below 256 (floor,
  center and the random tables of :func:`level_tables`), so each W_k entry is a
  multiple of 2^-9 below 4. Every product and partial sum is then a multiple of
  2^-9 below 3 * 4 * K + 64 < 2^14 for K <= 1000: at most 23 significant bits,
  so float32 holds every intermediate exactly and ANY summation order (SIMD
  lanes, FMA, threads) gives the exact result. Kernels must equal the torch
  reference bit for bit: a single wrong decoded bit anywhere shows.
* float: random normal x and W. Dequantized weights are exact (a level times a
  power of two), so the kernel and the torch reference differ only in summation
  order. The classic bound for a float32 dot product of n terms in any order is
  |fl - exact| <= gamma_n * sum|x_i w_i| with gamma_n = n u / (1 - n u),
  u = 2^-24; both results obey it (n = K + 2 covers the product roundings, the
  per-group scale and the bias), so they differ by at most
  2 gamma_n (sum|x_i w_i| + |b|). That is the per-element tolerance.

Embedding rows are exact in every kernel (a level times a power of two, no
sums), so embedding cases always compare bit for bit.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import torch

from otaro_export import ops, packing, sefp

#: (out_features N, in_features K, activation rows): K not a multiple of 64,
#: single-row (decode matvec), 2-3 rows (few-row matvec) and >= 4 rows (GEMM)
SHAPES = [(37, 100, 1), (64, 64, 1), (130, 577, 1), (19, 1000, 2), (50, 300, 3), (33, 200, 7), (128, 129, 16),
          (257, 1000, 1), (96, 640, 9)]  # fmt: skip
BITS = range(3, 9)
U = 2.0**-24
#: reconstruction rules every kernel is checked with (see level_tables)
RULES = ("floor", "center", "fitted", "generic")


def level_tables(seed: int = 0) -> dict[str, torch.Tensor | None]:
    """One table per rule: ``floor`` as ``None`` (no table, the default path), ``center``, a
    ``fitted``-like table (rows k = 3, 4 random non-negative, rows k >= 5 center: the k <= 4 LUT
    paths and the k >= 5 center arithmetic) and ``generic`` (every row random: the non-affine
    k >= 5 rows take the generic lookup path). Random entries are multiples of 1/8 below 256."""
    gen = torch.Generator().manual_seed(seed)
    center = sefp.center_levels()

    def random_rows(rows) -> torch.Tensor:
        t = center.clone()
        for row in rows:
            count = 1 << (row + sefp.SUPPORTED_BITS[0])
            t[row, :count] = torch.randint(0, 256 * 8, (count,), generator=gen).to(torch.float32) / 8
        return t

    return {"floor": None, "center": center, "fitted": random_rows([0, 1]), "generic": random_rows(range(6))}


def exact_problem(n: int, k: int, rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen).clamp(-3.9, 3.9)
    w[:, ::64] = 2.0 * torch.sign(torch.randn(n, w[:, ::64].shape[1], generator=gen))  # pins e = 1 per group
    x = torch.randint(-3, 4, (rows, k), generator=gen).to(torch.float32)
    bias = torch.randint(-4096, 4096, (n,), generator=gen).to(torch.float32) / 64
    return x, packing.pack(sefp.quantize(w)), bias


def float_problem(n: int, k: int, rows: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    x = torch.randn(rows, k, generator=gen)
    bias = torch.randn(n, generator=gen)
    return x, packing.pack(sefp.quantize(w)), bias


def reference(x, packed: packing.PackedSEFP, bits: int, bias, levels=None) -> torch.Tensor:
    return ops.reference_sefp_linear(x, *packed.planes(), packed.exponents, ops.bits_tensor(bits), bias, levels)


def embedding_reference(ids, packed: packing.PackedSEFP, bits: int, levels=None) -> torch.Tensor:
    return ops.reference_sefp_embedding(
        ids, *packed.planes(), packed.exponents, ops.bits_tensor(bits), packed.in_features, levels
    )


def summation_tolerance(x, packed: packing.PackedSEFP, bits: int, bias, levels=None):
    """2 gamma_{K+2} (sum |x_i w_i| + |b|) per output element (see the module docstring)."""
    k = x.shape[-1]
    w = packed.unpack().dequantize(bits, levels).to(torch.float64)
    mag = x.abs().to(torch.float64) @ w.abs().T
    if bias is not None:
        mag = mag + bias.abs().to(torch.float64)
    n_terms = k + 2
    gamma = n_terms * U / (1 - n_terms * U)
    return 2 * gamma * mag


def write_case(path: Path, x, packed, bits, bias, y_ref, tol, levels=None, ids=None, act_int8_max_bits=0) -> None:
    """The binary case format read by runtime_ops/csrc/tests/sefp_kernel_tests.cc.

    A linear case passes ``x``; an embedding case passes ``ids`` (int64) and ``x=None``.
    ``act_int8_max_bits``: the linear call's int8-activation setting (docs/FORMAT.md §9).
    """
    embedding = ids is not None
    rows = ids.numel() if embedding else x.shape[0]
    k = packed.in_features if embedding else x.shape[1]
    header = struct.pack(
        "<8s9q", b"SEFPCAS3", packed.out_features, k, packed.num_groups, rows, bits, bias is not None,
        levels is not None, embedding, act_int8_max_bits,
    )  # fmt: skip
    parts = [header, ids.numpy().astype("<i8").tobytes() if embedding else x.numpy().astype("<f4").tobytes()]
    parts += [p.numpy().tobytes() for p in (*packed.planes(), packed.exponents)]
    if bias is not None:
        parts.append(bias.numpy().astype("<f4").tobytes())
    if levels is not None:
        parts.append(levels.numpy().astype("<f4").tobytes())
    parts.append(y_ref.numpy().astype("<f4").tobytes())
    parts.append(np.asarray(tol, dtype="<f4").tobytes())
    path.write_bytes(b"".join(parts))
