"""The decoder ops of the fused ExecuTorch program: RMSNorm, rotary heads, SwiGLU and attention, one kernel call each.

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
    otaro_llm::kv_attention(Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache,
                            SymInt start_pos, int num_heads, int num_kv_heads, int head_dim, float scale) -> Tensor
        one decoder layer's attention on the packed projection qkv [1, S, (H + 2 KV) * D]:
        rotates the q and k heads (as rotary_heads), writes k and v into the caches
        [1, L, KV, D] at rows start_pos .. start_pos + S - 1 (in place: the caches are
        the method's mutable buffers), then causal grouped-query attention of each
        token over the rows up to its own position (q head h reads kv head
        h // (H / KV)); [1, S, H * D]. Replaces rotary_heads x3, ExecuTorch's
        llama::update_cache x2 and llama::custom_sdpa (whose matrix products go
        through libtorch's MKL in the Python runtime): a fused program needs no
        kernels beyond the project's library

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
_KV_ATTENTION_ARGS = (
    "Tensor qkv, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, SymInt start_pos, "
    "int num_heads, int num_kv_heads, int head_dim, float scale"
)
_lib.define(f"kv_attention({_KV_ATTENTION_ARGS}) -> Tensor")
_lib.define(f"kv_attention.out({_KV_ATTENTION_ARGS}, *, Tensor(c!) out) -> Tensor(c!)")


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


def reference_kv_attention(
    qkv, cos, sin, k_cache, v_cache, start_pos: int, num_heads: int, num_kv_heads: int, head_dim: int, scale: float
) -> torch.Tensor:
    """kv_attention in torch ops; writes the new rows into ``k_cache`` / ``v_cache`` like the kernel."""
    seq = qkv.shape[1]
    q = reference_rotary_heads(qkv, cos, sin, 0, num_heads, head_dim, True)
    k = reference_rotary_heads(qkv, cos, sin, num_heads, num_kv_heads, head_dim, True)
    v = reference_rotary_heads(qkv, cos, sin, num_heads + num_kv_heads, num_kv_heads, head_dim, False)
    k_cache[:, start_pos : start_pos + seq] = k
    v_cache[:, start_pos : start_pos + seq] = v
    return reference_sdpa(q, k_cache, v_cache, start_pos, scale).reshape(qkv.shape[0], seq, num_heads * head_dim)


def _kv_attention_fake(qkv, cos, sin, k_cache, v_cache, start_pos, num_heads, num_kv_heads, head_dim, scale):
    return qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads * head_dim)


def reference_sdpa(q, k_cache, v_cache, start_pos: int, scale: float) -> torch.Tensor:
    """Causal grouped-query attention over the cache; q head h reads kv head h // (H / KV)."""
    seq, heads = q.shape[1], q.shape[2]
    end = start_pos + seq
    group = heads // k_cache.shape[2]
    keys = k_cache[:, :end].repeat_interleave(group, dim=2)  # [1, end, H, D]
    values = v_cache[:, :end].repeat_interleave(group, dim=2)
    scores = torch.einsum("bshd,bthd->bhst", q, keys) * scale
    visible = torch.arange(end).unsqueeze(0) <= torch.arange(seq).unsqueeze(1) + start_pos  # [S, end]
    probs = torch.softmax(scores.masked_fill(~visible, float("-inf")), dim=-1)
    return torch.einsum("bhst,bthd->bshd", probs, values).contiguous()


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
_lib.impl("kv_attention", reference_kv_attention, "CompositeExplicitAutograd")
_lib.impl("kv_attention.out", _out(reference_kv_attention), "CompositeExplicitAutograd")
torch.library.register_fake(f"{NAMESPACE}::rms_norm", lambda x, weight, eps: torch.empty_like(x), lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::rotary_heads", _rotary_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::swiglu", lambda g: g.new_empty(*g.shape[:-1], g.shape[-1] // 2), lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::kv_attention", _kv_attention_fake, lib=_lib)
for _name in ("rms_norm", "rotary_heads", "swiglu", "kv_attention"):
    torch.library.register_fake(f"{NAMESPACE}::{_name}.out", lambda *args, out, **kwargs: out, lib=_lib)

rms_norm = torch.ops.otaro_llm.rms_norm.default
rotary_heads = torch.ops.otaro_llm.rotary_heads.default
swiglu = torch.ops.otaro_llm.swiglu.default
kv_attention = torch.ops.otaro_llm.kv_attention.default
