"""The decoder ops of the fused ExecuTorch program: RMSNorm, rotary heads and SwiGLU as one kernel call each.

Schemas (functional and ``.out``)::

    otaro_llm::rms_norm(Tensor x, Tensor weight, float eps) -> Tensor
        x / sqrt(mean(x^2, -1) + eps) * weight, float32 [..., D]
    otaro_llm::rotary_heads(Tensor qkv, Tensor cos, Tensor sin, int head_offset, int num_heads,
                            int head_dim, bool rotate) -> Tensor
        heads head_offset .. head_offset + num_heads - 1 of the packed projection
        qkv [B, S, heads_total * head_dim] as [B, S, num_heads, head_dim], with the
        non-interleaved rotary embedding of cos/sin [S, head_dim / 2] applied if rotate
    otaro_llm::swiglu(Tensor gate_up) -> Tensor
        silu(gate) * up for gate_up = [gate | up] along the last dim

In the graph they replace ~25 small ops per decoder layer (slices, views,
element-wise ops: each its own kernel call at run time and its own node for
every lowering pass to trace). The ExecuTorch ``.out`` kernels live in the
project's kernel library (``runtime_ops/csrc/executorch/llm_ops_kernel.cc``),
loaded with the SEFP kernels; the portable and fp32 programs use the plain
torch ops of the references instead (stock runtime).

Importing this module registers the ops (torch references, fake kernels).
"""

from __future__ import annotations

import torch

from otaro_export.export.contrib_ops import reference_rms_norm, reference_swiglu

NAMESPACE = "otaro_llm"

_ROTARY_ARGS = "Tensor qkv, Tensor cos, Tensor sin, int head_offset, int num_heads, int head_dim, bool rotate"
_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_lib.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")
_lib.define("rms_norm.out(Tensor x, Tensor weight, float eps, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define(f"rotary_heads({_ROTARY_ARGS}) -> Tensor")
_lib.define(f"rotary_heads.out({_ROTARY_ARGS}, *, Tensor(a!) out) -> Tensor(a!)")
_lib.define("swiglu(Tensor gate_up) -> Tensor")
_lib.define("swiglu.out(Tensor gate_up, *, Tensor(a!) out) -> Tensor(a!)")


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotary embedding of ``x [..., S, heads, D]`` with ``cos``/``sin`` ``[S, D/2]``."""
    half = x.shape[-1] // 2
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)  # [S, 1, D/2]: broadcast over heads
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference_rotary_heads(qkv, cos, sin, head_offset: int, num_heads: int, head_dim: int, rotate_: bool):
    batch, seq = qkv.shape[0], qkv.shape[1]
    heads = qkv[..., head_offset * head_dim : (head_offset + num_heads) * head_dim].reshape(
        batch, seq, num_heads, head_dim
    )
    return (rotate(heads, cos, sin) if rotate_ else heads).contiguous()


def _rotary_fake(qkv, cos, sin, head_offset, num_heads, head_dim, rotate_):
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads, head_dim)


def _out(reference):
    def out_variant(*args, out):
        return out.copy_(reference(*args))

    return out_variant


_lib.impl("rms_norm", reference_rms_norm, "CompositeExplicitAutograd")
_lib.impl("rms_norm.out", _out(reference_rms_norm), "CompositeExplicitAutograd")
_lib.impl("rotary_heads", reference_rotary_heads, "CompositeExplicitAutograd")
_lib.impl("rotary_heads.out", _out(reference_rotary_heads), "CompositeExplicitAutograd")
_lib.impl("swiglu", reference_swiglu, "CompositeExplicitAutograd")
_lib.impl("swiglu.out", _out(reference_swiglu), "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::rms_norm", lambda x, weight, eps: torch.empty_like(x), lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::rotary_heads", _rotary_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::swiglu", lambda g: g.new_empty(*g.shape[:-1], g.shape[-1] // 2), lib=_lib)
for _name in ("rms_norm", "rotary_heads", "swiglu"):
    torch.library.register_fake(f"{NAMESPACE}::{_name}.out", lambda *args, out, **kwargs: out, lib=_lib)

rms_norm = torch.ops.otaro_llm.rms_norm.default
rotary_heads = torch.ops.otaro_llm.rotary_heads.default
swiglu = torch.ops.otaro_llm.swiglu.default
