"""Decompose ``otaro::sefp_linear`` into Core ATen ops that a stock ExecuTorch runtime runs.

The ``--kernels portable`` ExecuTorch artifact must run on the stock portable
kernels (plus XNNPACK) with no project library. This pass rewrites every
``otaro.sefp_linear`` node of an ExportedProgram into a dequantize-then-linear
subgraph built only from ops the portable runtime has (docs/FORMAT.md §5):

* unpacking the planes uses ``bitwise_and`` and a broadcast floor ``div`` by
  powers of two on int32 (bit shifts are not Core ATen, and uint8 ``>>`` has no
  portable kernel);
* the precision mask ``0xFF << (8 - bits)`` is picked by ``index_select`` from
  the 6 valid masks at index ``bits - 3``, so a ``bits`` outside 3..8 is an
  out-of-range index: an error in eager and in the portable kernel, never a
  silently wrong mask;
* ``2**(e - 7)`` is an integer ``pow(2, e + 15)`` (exact in int64 and float32)
  times the float constant ``2**-22``, so every dequantized weight equals
  :meth:`SEFPWeight.dequantize` bit for bit;
* the four planes' fields sum to each weight's index ``s * 256 + q`` into a
  512-entry signed level table built from ``bits`` (and the layer's
  reconstruction table ``levels``, docs/FORMAT.md §3): entry ``s * 256 + q`` is
  ``(-1)**s * levels[bits - 3, q_k // 2**(8 - bits)]`` with ``q_k = q & mask``
  (exact), or ``(-1)**s * q_k`` for the floor rule. One ``index_select`` per
  weight then replaces masking, a level lookup and a sign select;
* the table's subgraph depends on ``bits`` and constants only, so
  ``merge_duplicate_nodes`` (run after this pass by the ExecuTorch export)
  keeps one copy of what the layers share (the mask, the floor rule's whole
  table, the field divisors);
* the matmul is ``aten.linear`` on the dequantized weight (XNNPACK takes it
  when partitioned with ``force_non_static_weights_for_f32_linear=True``);
* int8 activations (a node's ``act_int8_max_bits > 0``, docs/FORMAT.md §9):
  ``fq(x)`` of :mod:`otaro_export.activation_quant` built from the same
  float32 operations (``amax`` of ``abs`` per 64-feature block, ``127 / a`` as a
  division, ``round`` half to even, ``clamp``, ``a / 127``), and the linear reads
  ``where(bits <= act_int8_max_bits, fq(x), x)``: ``bits`` is a run-time input,
  so both are computed (the float matmul of ``fq(x)``, not an integer kernel).

The packed planes stay the program's only weight constants (ExecuTorch's
default lowering does not constant-fold the unpacking; the export tests check
the file size). This path dequantizes every weight on every call and reads
every plane at every precision; only the fused kernel skips the planes a low
precision does not need.
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram

from otaro_export import ops
from otaro_export.activation_quant import QMAX
from otaro_export.packing import PLANE_BYTES_PER_GROUP
from otaro_export.sefp import EXPONENT_MIN, GROUP_SIZE, STORED_MANTISSA_BITS, SUPPORTED_BITS

__all__ = [
    "decompose_sefp_linear",
    "decomposition_table",
    "sefp_linear_decomposition",
    "dequantize_planes",
    "count_sefp_nodes",
    "fake_quantize_activations",
]

_SEFP_OVERLOADS = (ops.sefp_linear, ops.sefp_linear_out)


def _mask(bits: torch.Tensor) -> torch.Tensor:
    """``0xFF << (8 - bits)`` as a 1-element int32 tensor; raises for ``bits`` outside 3..8.

    The table of the six valid masks is built with ``arange``/``pow`` (tensor
    literals would become constants that ``run_decompositions`` cannot lift),
    and ``index_select`` at ``bits - 3`` is the range check.
    """
    lowest, count = SUPPORTED_BITS[0], len(SUPPORTED_BITS)
    dropped_bits = (STORED_MANTISSA_BITS - lowest) - torch.arange(count, dtype=torch.int64)  # 5..0
    table = 256 - torch.pow(2, dropped_bits)
    return torch.index_select(table, 0, (bits - lowest).reshape(1)).to(torch.int32)


def _scale(exponents: torch.Tensor) -> torch.Tensor:
    """``2**(e - 7)`` as exact float32: an exact integer power of two times an exact float power of two."""
    shift = -EXPONENT_MIN  # e + 15 in 0..31: 2**(e+15) fits int64 and is exact in float32
    as_int = torch.pow(2, exponents.to(torch.int64) + shift)
    return as_int.to(torch.float32) * (2.0 ** (EXPONENT_MIN - (STORED_MANTISSA_BITS - 1)))


def _fields(plane: torch.Tensor, n: int, g: int, lanes: int, width: int) -> torch.Tensor:
    """Split each byte of a ``[N, G*lanes]`` plane into its ``8 // width`` fields.

    Byte i of a group holds the field of element ``i + lanes*j`` at bits
    ``width*j ..``; the result is ``[N, G, 64]`` int32 in element order. One
    broadcast floor-division by ``[1, radix, radix**2, ...]`` extracts every
    field at once (few graph nodes keep lowering fast).
    """
    count = 8 // width
    radix = 1 << width
    divisors = torch.pow(radix, torch.arange(count, dtype=torch.int32)).reshape(1, 1, count, 1)
    b = plane.to(torch.int32).reshape(n, g, 1, lanes)
    return torch.bitwise_and(torch.div(b, divisors, rounding_mode="floor"), radix - 1).reshape(n, g, GROUP_SIZE)


def _signed_levels(bits: torch.Tensor, levels: torch.Tensor | None) -> torch.Tensor:
    """``[512]`` float32: entry ``s * 256 + q`` is ``(-1)**s`` times the level of M8 magnitude ``q`` at ``bits``.

    The floor rule's level is ``q_k = q & mask`` itself; a table's is ``levels[bits - 3, q_k // 2**(8 - bits)]``
    (exact). Built from ``bits`` and the table only, so every floor-rule layer shares one such subgraph
    (``merge_duplicate_nodes``), and each weight then needs a single gather instead of masking, a table
    lookup and a sign select of its own.
    """
    lowest = SUPPORTED_BITS[0]
    q = torch.arange(1 << STORED_MANTISSA_BITS, dtype=torch.int32)
    q_k = torch.bitwise_and(q, _mask(bits))  # the mask's index_select is the bits range check
    if levels is None:
        magnitude = q_k.to(torch.float32)
    else:
        row = torch.index_select(levels, 0, (bits - lowest).reshape(1)).reshape(-1)
        step = torch.pow(2, STORED_MANTISSA_BITS - bits)  # int64: one E5Mk step in M8 steps
        magnitude = torch.index_select(row, 0, torch.div(q_k, step, rounding_mode="floor"))
    return torch.cat([magnitude, -magnitude])  # -0.0 for a negative zero level, as the reference gives


def dequantize_planes(p0, p1, p2, p3, exponents, bits, levels=None) -> torch.Tensor:
    """The weight at ``bits`` as float32 ``[N, G*64]`` (padded), bit-exact, from Core ATen ops.

    Shared by the linear and embedding decompositions (the embedding passes the gathered rows).
    """
    n, g = exponents.shape
    lanes = PLANE_BYTES_PER_GROUP  # plane p's byte i of a group holds element i + lanes * j in field j
    # p0's field is sign << 3 | q[7:5], so 32 * field = sign * 256 + (q & 0xE0): the index s * 256 + q
    # into the signed level table is a sum of the four planes' fields
    index = (
        _fields(p0, n, g, lanes["p0"], 4) * 32
        + _fields(p1, n, g, lanes["p1"], 2) * 8
        + _fields(p2, n, g, lanes["p2"], 2) * 2
        + _fields(p3, n, g, lanes["p3"], 1)
    )
    signed = torch.index_select(_signed_levels(bits, levels), 0, index.reshape(-1)).reshape(n, g, GROUP_SIZE)
    return (signed * _scale(exponents).reshape(n, g, 1)).reshape(n, g * GROUP_SIZE)


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """``activation_quant.fake_quantize(x)`` from Core ATen ops, the same float32 operations in the same order.

    No tensor literals (``run_decompositions`` cannot lift them): ``127 / a`` divides a ``full_like``
    (``127.0 / a`` would trace as ``reciprocal(a) * 127``, one more rounding).
    """
    k = x.shape[-1]
    pad = -k % GROUP_SIZE
    padded = torch.nn.functional.pad(x, (0, pad)) if pad else x
    blocks = padded.reshape(*x.shape[:-1], -1, GROUP_SIZE)
    a = torch.amax(torch.abs(blocks), dim=-1, keepdim=True)
    keep = torch.logical_or(torch.logical_or(a == 0, a != a), a == float("inf"))  # a >= 0 or NaN
    safe = torch.where(keep, torch.ones_like(a), a)
    inv = torch.div(torch.full_like(safe, float(QMAX)), safe)
    q = torch.clamp(torch.round(blocks * inv), -QMAX, QMAX)
    out = torch.where(keep, blocks, q * torch.div(safe, float(QMAX)))
    out = out.reshape(*x.shape[:-1], k + pad)
    return out[..., :k] if pad else out


def sefp_linear_decomposition(x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0):
    """Core-ATen equivalent of ``otaro::sefp_linear`` (same result, bit-exact weights)."""
    ops.check_act_int8_max_bits(act_int8_max_bits)
    k = x.shape[-1]
    weight = dequantize_planes(p0, p1, p2, p3, exponents, bits, levels)
    if k != weight.shape[1]:
        weight = weight[:, :k]
    if act_int8_max_bits:
        x = torch.where(torch.le(bits, act_int8_max_bits), fake_quantize_activations(x), x)
    return torch.nn.functional.linear(x, weight, bias)


def _sefp_linear_out_decomposition(
    x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0, *, out
):
    result = sefp_linear_decomposition(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits)
    return out.copy_(result)


def count_sefp_nodes(ep: ExportedProgram) -> int:
    return sum(1 for node in ep.graph.nodes if node.op == "call_function" and node.target in _SEFP_OVERLOADS)


def decomposition_table() -> dict:
    """``run_decompositions`` table of this pass (merged with the embedding's for one retrace of the program)."""
    return {ops.sefp_linear: sefp_linear_decomposition, ops.sefp_linear_out: _sefp_linear_out_decomposition}


def decompose_sefp_linear(ep: ExportedProgram) -> ExportedProgram:
    """Return ``ep`` with every ``otaro::sefp_linear`` node replaced by Core ATen ops.

    Other ops are left as they are (the decomposition table holds only the SEFP
    op), so the result can go straight to ``to_edge_transform_and_lower``.
    """
    if count_sefp_nodes(ep) == 0:
        return ep
    out = ep.run_decompositions(decomposition_table())
    left = count_sefp_nodes(out)
    if left:
        raise RuntimeError(f"decompose_sefp_linear: {left} otaro::sefp_linear node(s) survived decomposition")
    return out
