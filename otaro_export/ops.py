"""The custom ops ``otaro::sefp_linear`` and ``otaro::sefp_embedding`` and their torch references.

Schemas (functional and ``.out``; docs/FORMAT.md §5)::

    otaro::sefp_linear(Tensor x, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents,
                       Tensor bits, Tensor? bias=None, Tensor? levels=None,
                       int act_int8_max_bits=0) -> Tensor
    otaro::sefp_embedding(Tensor ids, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents,
                          Tensor bits, int in_features, Tensor? levels=None) -> Tensor

``p0..p3``/``exponents`` are the packed planes of :mod:`otaro_export.packing`
for a ``[N, K]`` weight; ``bits`` is a 0-dim int64 tensor (a Python int would
be specialised away by torch.export); ``levels`` is an optional reconstruction
table, float32 ``[6, 256]`` (docs/FORMAT.md §3; ``None`` is the paper's
``floor`` rule).

* ``sefp_linear``: ``x`` float32 ``[..., K]``, ``bias`` optional float32 ``[N]``.
  Returns ``x @ W_k^T + bias`` as float32 ``[..., N]`` where ``W_k`` is the
  weight at precision E5M``bits``. ``act_int8_max_bits`` (0: never; else 3..8)
  turns on int8 activations (docs/FORMAT.md §9): a call whose ``bits`` (the
  effective precision: the lowering feeds ``clamp_min(bits, floor)``) is
  ``<= act_int8_max_bits`` returns ``fq(x) @ W_k^T + bias``
  (:func:`otaro_export.activation_quant.fake_quantize`). It is an export-time
  constant of each node, the ONNX node's attribute of the same name; it is last
  with a default so graphs and ``.pte`` files made before it existed stay valid.
* ``sefp_embedding``: ``ids`` int64, any shape, each in ``[0, N)``. Returns
  rows ``ids`` of ``W_k`` as float32 ``[*ids.shape, in_features]`` (the
  planes' padded K cannot tell ``in_features``, hence the argument). The tied
  embedding and lm_head read the same planes: one copy serves both ops.

``bits`` comes before the optional inputs so that they are last, which is also
the ONNX nodes' input order (``X, P0, P1, P2, P3, E, bits[, B[, L]]`` and
``ids, P0, P1, P2, P3, E, bits[, L]``).

Importing this module registers the ops. The references are exact SEFP
dequantization (of the gathered rows, for the embedding) followed by a float32
matmul; the native kernels in ``runtime_ops`` must match them.
"""

from __future__ import annotations

import torch

from otaro_export.errors import InvalidBitsError
from otaro_export.packing import check_planes, unpack
from otaro_export.sefp import GROUP_SIZE, LEVELS_SHAPE, SUPPORTED_BITS

NAMESPACE = "otaro"
OP_NAME = "sefp_linear"
EMBEDDING_OP_NAME = "sefp_embedding"

_PLANES = "Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents, Tensor bits"
_ARGS = f"Tensor x, {_PLANES}, Tensor? bias=None, Tensor? levels=None, int act_int8_max_bits=0"
_EMBEDDING_ARGS = f"Tensor ids, {_PLANES}, int in_features, Tensor? levels=None"

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_lib.define(f"{OP_NAME}({_ARGS}) -> Tensor")
_lib.define(f"{OP_NAME}.out({_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define(f"{EMBEDDING_OP_NAME}({_EMBEDDING_ARGS}) -> Tensor")
_lib.define(f"{EMBEDDING_OP_NAME}.out({_EMBEDDING_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")


def check_bits_tensor(bits: torch.Tensor, op: str = OP_NAME) -> None:
    """Shape/dtype contract of the runtime precision input (value is checked at run time)."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.int64 or bits.dim() != 0:
        desc = f"{bits.dtype} tensor of shape {tuple(bits.shape)}" if isinstance(bits, torch.Tensor) else repr(bits)
        raise InvalidBitsError(f"otaro::{op}: bits must be a 0-dim int64 tensor, got {desc}")


def _check_levels_tensor(levels: torch.Tensor | None, op: str) -> None:
    """dtype and shape of the optional table (its values are checked where it is read)."""
    if levels is not None and (levels.dtype != torch.float32 or tuple(levels.shape) != LEVELS_SHAPE):
        raise ValueError(
            f"otaro::{op}: levels must be float32 {list(LEVELS_SHAPE)}, got {levels.dtype} {list(levels.shape)}"
        )


def _check_features(k: int, g: int, what: str, op: str) -> None:
    if not (g * GROUP_SIZE - GROUP_SIZE < k <= g * GROUP_SIZE):
        raise ValueError(
            f"otaro::{op}: {what} {k} input features but the weight has {g} groups of {GROUP_SIZE} "
            f"(accepts {g * GROUP_SIZE - GROUP_SIZE + 1}..{g * GROUP_SIZE})"
        )


def check_act_int8_max_bits(value) -> int:
    """``act_int8_max_bits`` of a call: 0 (off) or 3..8 (ValueError otherwise)."""
    from otaro_export.activation_quant import check_max_bits

    try:
        return check_max_bits(value)
    except ValueError:
        raise ValueError(
            f"otaro::{OP_NAME}: act_int8_max_bits must be 0 (off) or one of {list(SUPPORTED_BITS)}, got {value!r}"
        ) from None


def _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits=0) -> None:
    check_bits_tensor(bits)
    check_act_int8_max_bits(act_int8_max_bits)
    if x.dtype != torch.float32:
        raise TypeError(f"otaro::sefp_linear: x must be float32, got {x.dtype}")
    check_planes(p0, p1, p2, p3, exponents)
    n, g = exponents.shape
    _check_features(x.shape[-1], g, "x has", OP_NAME)
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (n,)):
        raise ValueError(f"otaro::sefp_linear: bias must be float32 [{n}], got {bias.dtype} {list(bias.shape)}")
    _check_levels_tensor(levels, OP_NAME)


def _check_embedding_inputs(ids, p0, p1, p2, p3, exponents, bits, in_features, levels) -> None:
    check_bits_tensor(bits, EMBEDDING_OP_NAME)
    if ids.dtype != torch.int64:
        raise TypeError(f"otaro::sefp_embedding: ids must be int64, got {ids.dtype}")
    check_planes(p0, p1, p2, p3, exponents)
    _check_features(in_features, exponents.shape[1], "in_features is", EMBEDDING_OP_NAME)
    _check_levels_tensor(levels, EMBEDDING_OP_NAME)


def _precision(bits: torch.Tensor, op: str) -> int:
    k_bits = int(bits.item())
    if k_bits not in SUPPORTED_BITS:
        raise InvalidBitsError(f"otaro::{op}: bits must be one of {list(SUPPORTED_BITS)}, got {k_bits}")
    return k_bits


def reference_sefp_linear(
    x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0
) -> torch.Tensor:
    """Torch reference: exact dequantization at ``bits`` (rule ``levels``), then ``x @ W.T + bias``
    (``fq(x)`` instead of ``x`` when ``bits <= act_int8_max_bits``, docs/FORMAT.md §9)."""
    from otaro_export import activation_quant

    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits)
    k_bits = _precision(bits, OP_NAME)
    w = unpack(p0, p1, p2, p3, exponents, x.shape[-1]).dequantize(k_bits, levels)
    if activation_quant.applies(k_bits, act_int8_max_bits):
        x = activation_quant.fake_quantize(x)
    return torch.nn.functional.linear(x, w, bias)


def check_ids(ids: torch.Tensor, num_rows: int) -> None:
    """Raise IndexError naming the first id outside ``[0, num_rows)``."""
    flat = ids.reshape(-1)
    bad = ((flat < 0) | (flat >= num_rows)).nonzero()
    if bad.numel():
        pos = int(bad[0, 0])
        raise IndexError(
            f"otaro::sefp_embedding: id {int(flat[pos])} at flat position {pos} is outside [0, {num_rows})"
        )


def reference_sefp_embedding(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None) -> torch.Tensor:
    """Torch reference: the rows ``ids`` of the weight at ``bits`` (rule ``levels``), exact.

    Only the gathered rows are unpacked and dequantized (a vocabulary-sized
    table is never materialised).
    """
    _check_embedding_inputs(ids, p0, p1, p2, p3, exponents, bits, in_features, levels)
    k_bits = _precision(bits, EMBEDDING_OP_NAME)
    check_ids(ids, exponents.shape[0])
    flat = ids.reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(*ids.shape, in_features, dtype=torch.float32)
    rows = unpack(p0[flat], p1[flat], p2[flat], p3[flat], exponents[flat], in_features).dequantize(k_bits, levels)
    return rows.reshape(*ids.shape, in_features)


def _output_shape(x: torch.Tensor, exponents: torch.Tensor) -> list:
    return [*x.shape[:-1], exponents.shape[0]]


def _sefp_linear_out(x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0, *, out):
    result = reference_sefp_linear(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits)
    out.resize_(result.shape).copy_(result)
    return out


def _sefp_linear_fake(x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0):
    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits)
    return x.new_empty(_output_shape(x, exponents))


def _sefp_linear_out_fake(x, p0, p1, p2, p3, exponents, bits, bias=None, levels=None, act_int8_max_bits=0, *, out):
    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias, levels, act_int8_max_bits)
    return out


def _sefp_embedding_out(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None, *, out):
    result = reference_sefp_embedding(ids, p0, p1, p2, p3, exponents, bits, in_features, levels)
    out.resize_(result.shape).copy_(result)
    return out


def _sefp_embedding_fake(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None):
    _check_embedding_inputs(ids, p0, p1, p2, p3, exponents, bits, in_features, levels)
    return ids.new_empty([*ids.shape, in_features], dtype=torch.float32)


def _sefp_embedding_out_fake(ids, p0, p1, p2, p3, exponents, bits, in_features, levels=None, *, out):
    _check_embedding_inputs(ids, p0, p1, p2, p3, exponents, bits, in_features, levels)
    return out


_lib.impl(OP_NAME, reference_sefp_linear, "CompositeExplicitAutograd")
_lib.impl(f"{OP_NAME}.out", _sefp_linear_out, "CompositeExplicitAutograd")
_lib.impl(EMBEDDING_OP_NAME, reference_sefp_embedding, "CompositeExplicitAutograd")
_lib.impl(f"{EMBEDDING_OP_NAME}.out", _sefp_embedding_out, "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::{OP_NAME}", _sefp_linear_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::{OP_NAME}.out", _sefp_linear_out_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::{EMBEDDING_OP_NAME}", _sefp_embedding_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::{EMBEDDING_OP_NAME}.out", _sefp_embedding_out_fake, lib=_lib)

sefp_linear = torch.ops.otaro.sefp_linear.default
sefp_linear_out = torch.ops.otaro.sefp_linear.out
sefp_embedding = torch.ops.otaro.sefp_embedding.default
sefp_embedding_out = torch.ops.otaro.sefp_embedding.out


def bits_tensor(bits: int) -> torch.Tensor:
    """The 0-dim int64 tensor the ops take as their precision input."""
    from otaro_export.sefp import check_bits

    return torch.tensor(check_bits(bits), dtype=torch.int64)
