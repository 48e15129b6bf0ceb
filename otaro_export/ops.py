"""The custom op ``otaro::sefp_linear`` (DESIGN.md section 4) and its torch reference.

Schema (functional and ``.out``)::

    otaro::sefp_linear(Tensor x, Tensor p0, Tensor p1, Tensor p2, Tensor p3,
                       Tensor exponents, Tensor bits, Tensor? bias=None) -> Tensor

``x`` is float32 ``[..., K]``; ``p0..p3``/``exponents`` are the packed planes
of :mod:`otaro_export.packing` for a ``[N, K]`` weight; ``bits`` is a 0-dim
int64 tensor (a Python int would be specialised away by torch.export);
``bias`` is optional float32 ``[N]``. Returns ``x @ W_k^T + bias`` as float32
``[..., N]`` where ``W_k`` is the weight at precision E5M``bits``.

``bits`` comes before ``bias`` so that the optional input is last, which is
also the ONNX node's input order (``X, P0, P1, P2, P3, E, bits[, B]``).

Importing this module registers the op. The reference kernel is exact
SEFP dequantization followed by a float32 matmul; the native kernels in
``runtime_ops`` must match it.
"""

from __future__ import annotations

import torch

from otaro_export.errors import InvalidBitsError
from otaro_export.packing import check_planes, unpack
from otaro_export.sefp import GROUP_SIZE, SUPPORTED_BITS

NAMESPACE = "otaro"
OP_NAME = "sefp_linear"

_ARGS = "Tensor x, Tensor p0, Tensor p1, Tensor p2, Tensor p3, Tensor exponents, Tensor bits, Tensor? bias=None"

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_lib.define(f"{OP_NAME}({_ARGS}) -> Tensor")
_lib.define(f"{OP_NAME}.out({_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")


def check_bits_tensor(bits: torch.Tensor) -> None:
    """Shape/dtype contract of the runtime precision input (value is checked at run time)."""
    if not isinstance(bits, torch.Tensor) or bits.dtype != torch.int64 or bits.dim() != 0:
        desc = f"{bits.dtype} tensor of shape {tuple(bits.shape)}" if isinstance(bits, torch.Tensor) else repr(bits)
        raise InvalidBitsError(f"otaro::sefp_linear: bits must be a 0-dim int64 tensor, got {desc}")


def _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias) -> None:
    check_bits_tensor(bits)
    if x.dtype != torch.float32:
        raise TypeError(f"otaro::sefp_linear: x must be float32, got {x.dtype}")
    check_planes(p0, p1, p2, p3, exponents)
    n, g = exponents.shape
    k = x.shape[-1]
    if not (g * GROUP_SIZE - GROUP_SIZE < k <= g * GROUP_SIZE):
        raise ValueError(
            f"otaro::sefp_linear: x has {k} input features but the weight has {g} groups of {GROUP_SIZE} "
            f"(accepts {g * GROUP_SIZE - GROUP_SIZE + 1}..{g * GROUP_SIZE})"
        )
    if bias is not None and (bias.dtype != torch.float32 or tuple(bias.shape) != (n,)):
        raise ValueError(f"otaro::sefp_linear: bias must be float32 [{n}], got {bias.dtype} {list(bias.shape)}")


def _output_shape(x: torch.Tensor, exponents: torch.Tensor) -> list:
    return [*x.shape[:-1], exponents.shape[0]]


def reference_sefp_linear(x, p0, p1, p2, p3, exponents, bits, bias=None) -> torch.Tensor:
    """Torch reference: exact dequantization at ``bits``, then ``x @ W.T + bias``."""
    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias)
    k_bits = int(bits.item())
    if k_bits not in SUPPORTED_BITS:
        raise InvalidBitsError(f"otaro::sefp_linear: bits must be one of {list(SUPPORTED_BITS)}, got {k_bits}")
    w = unpack(p0, p1, p2, p3, exponents, x.shape[-1]).dequantize(k_bits)
    return torch.nn.functional.linear(x, w, bias)


def _sefp_linear_out(x, p0, p1, p2, p3, exponents, bits, bias=None, *, out):
    result = reference_sefp_linear(x, p0, p1, p2, p3, exponents, bits, bias)
    out.resize_(result.shape).copy_(result)
    return out


def _sefp_linear_fake(x, p0, p1, p2, p3, exponents, bits, bias=None):
    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias)
    return x.new_empty(_output_shape(x, exponents))


def _sefp_linear_out_fake(x, p0, p1, p2, p3, exponents, bits, bias=None, *, out):
    _check_inputs(x, p0, p1, p2, p3, exponents, bits, bias)
    return out


_lib.impl(OP_NAME, reference_sefp_linear, "CompositeExplicitAutograd")
_lib.impl(f"{OP_NAME}.out", _sefp_linear_out, "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::{OP_NAME}", _sefp_linear_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::{OP_NAME}.out", _sefp_linear_out_fake, lib=_lib)

sefp_linear = torch.ops.otaro.sefp_linear.default
sefp_linear_out = torch.ops.otaro.sefp_linear.out


def bits_tensor(bits: int) -> torch.Tensor:
    """The 0-dim int64 tensor the op takes as its precision input."""
    from otaro_export.sefp import check_bits

    return torch.tensor(check_bits(bits), dtype=torch.int64)
