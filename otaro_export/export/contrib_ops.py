"""Torch stand-ins for the onnxruntime contrib ops the ONNX decoder graph uses.

The ONNX exporter emits onnxruntime's fused CPU ops instead of the hundreds of
small nodes an eager attention block exports to. Each op here is one opaque
node in the exported program, with an exact torch reference (eager runs and
parity tests) and a fake kernel (shapes for ``torch.export``);
:func:`translation_table` maps each to its ``com.microsoft`` node:

``otaro_ort::skip_rms_norm(x, skip, weight, eps) -> (normed, x + skip)``
    -> ``SkipSimplifiedLayerNormalization`` (outputs 0 and 3).
``otaro_ort::rms_norm(x, weight, eps) -> normed``
    -> ``SimplifiedLayerNormalization``.
``otaro_ort::swiglu(gate_up) -> silu(gate) * up``
    -> ``Split``, ``Sigmoid``, ``Mul``, ``Mul`` (standard ops; no fused CPU kernel exists).
``otaro_ort::group_query_attention(qkv, past_key, past_value, seqlens_k, total_length,
cos_cache, sin_cache, num_heads, kv_num_heads, scale) -> (out, present_key, present_value)``
    -> ``GroupQueryAttention`` with packed QKV and rotary inside (``do_rotary=1``).
    ``past_*`` are the whole preallocated caches ``[1, kv_heads, max_len, head_dim]``;
    the S new positions are ``total_length - S .. total_length - 1``; ``present_*``
    are the same caches with those positions written. A session binds each
    present to its past buffer, so onnxruntime writes one position per step in
    place instead of copying the cache.
"""

from __future__ import annotations

import onnx
import torch

NAMESPACE = "otaro_ort"
MS_DOMAIN = "com.microsoft"

_lib = torch.library.Library(NAMESPACE, "FRAGMENT")
_lib.define("skip_rms_norm(Tensor x, Tensor skip, Tensor weight, float eps) -> (Tensor, Tensor)")
_lib.define("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor")
_lib.define("swiglu(Tensor gate_up) -> Tensor")
_lib.define(
    "group_query_attention(Tensor qkv, Tensor past_key, Tensor past_value, Tensor seqlens_k, "
    "Tensor total_length, Tensor cos_cache, Tensor sin_cache, int num_heads, int kv_num_heads, float scale) "
    "-> (Tensor, Tensor, Tensor)"
)


def reference_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``x / sqrt(mean(x^2) + eps) * weight`` in float32 (HF LlamaRMSNorm)."""
    x32 = x.to(torch.float32)
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight).to(x.dtype)


def _skip_rms_norm(x, skip, weight, eps):
    total = x + skip
    return reference_rms_norm(total, weight, eps), total


def reference_swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` for ``gate_up = [gate | up]`` along the last dim."""
    gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
    return torch.nn.functional.silu(gate) * up


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotary embedding of ``x [..., S, D]`` with ``cos``/``sin`` ``[S, D/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference_group_query_attention(
    qkv, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache, num_heads, kv_num_heads, scale
):
    """Eager semantics of onnxruntime's GroupQueryAttention (batch 1, packed QKV, shared KV buffers)."""
    _, seq, _ = qkv.shape
    head_dim = past_key.shape[-1]
    total = int(total_length)
    start = total - seq
    if start < 0 or total > past_key.shape[2] or int(seqlens_k.reshape(-1)[0]) != total - 1:
        raise ValueError(
            f"group_query_attention: {seq} new positions ending at {total} do not fit a cache of "
            f"{past_key.shape[2]} (seqlens_k={seqlens_k.tolist()})"
        )
    q, k, v = qkv.split([num_heads * head_dim, kv_num_heads * head_dim, kv_num_heads * head_dim], dim=-1)
    q = q.reshape(1, seq, num_heads, head_dim).transpose(1, 2)
    k = k.reshape(1, seq, kv_num_heads, head_dim).transpose(1, 2)
    v = v.reshape(1, seq, kv_num_heads, head_dim).transpose(1, 2)
    cos, sin = cos_cache[start:total], sin_cache[start:total]
    q, k = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
    present_key, present_value = past_key.clone(), past_value.clone()
    present_key[:, :, start:total] = k
    present_value[:, :, start:total] = v
    group = num_heads // kv_num_heads
    keys = present_key[:, :, :total].repeat_interleave(group, dim=1)
    values = present_value[:, :, :total].repeat_interleave(group, dim=1)
    scores = (q @ keys.transpose(-1, -2)) * scale
    query_pos = torch.arange(start, total).unsqueeze(1)
    causal = torch.arange(total).unsqueeze(0) <= query_pos
    scores = scores.masked_fill(~causal, float("-inf"))
    out = torch.softmax(scores, dim=-1) @ values
    return out.transpose(1, 2).reshape(1, seq, num_heads * head_dim), present_key, present_value


def _gqa_fake(qkv, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache, num_heads, kv_num_heads, scale):
    head_dim = past_key.shape[-1]
    out = qkv.new_empty(qkv.shape[0], qkv.shape[1], num_heads * head_dim)
    return out, past_key.new_empty(past_key.shape), past_value.new_empty(past_value.shape)


_lib.impl("skip_rms_norm", _skip_rms_norm, "CompositeExplicitAutograd")
_lib.impl("rms_norm", reference_rms_norm, "CompositeExplicitAutograd")
_lib.impl("group_query_attention", reference_group_query_attention, "CompositeExplicitAutograd")
_lib.impl("swiglu", reference_swiglu, "CompositeExplicitAutograd")
torch.library.register_fake(
    f"{NAMESPACE}::skip_rms_norm", lambda x, skip, weight, eps: (torch.empty_like(x), torch.empty_like(x)), lib=_lib
)
torch.library.register_fake(f"{NAMESPACE}::rms_norm", lambda x, weight, eps: torch.empty_like(x), lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::group_query_attention", _gqa_fake, lib=_lib)
torch.library.register_fake(f"{NAMESPACE}::swiglu", lambda g: g.new_empty(*g.shape[:-1], g.shape[-1] // 2), lib=_lib)

skip_rms_norm = torch.ops.otaro_ort.skip_rms_norm.default
rms_norm = torch.ops.otaro_ort.rms_norm.default
group_query_attention = torch.ops.otaro_ort.group_query_attention.default
swiglu = torch.ops.otaro_ort.swiglu.default


def _schema(name: str, inputs, outputs, attributes) -> onnx.defs.OpSchema:
    """An (unregistered) schema: enough for onnxscript to build the node; onnx.checker skips the domain."""
    P = onnx.defs.OpSchema.FormalParameter
    optional = onnx.defs.OpSchema.FormalParameterOption.Optional
    return onnx.defs.OpSchema(
        name,
        MS_DOMAIN,
        1,
        inputs=[P(n, t, param_option=optional) if opt else P(n, t) for n, t, opt in inputs],
        outputs=[P(n, t, param_option=optional) if opt else P(n, t) for n, t, opt in outputs],
        attributes=[onnx.defs.OpSchema.Attribute(n, t, required=req) for n, t, req in attributes],
    )


def translation_table() -> dict:
    """``torch.onnx.export`` translations: each op becomes one onnxruntime node.

    The first RMSNorm has no residual to fuse; onnxruntime's
    SimplifiedLayerNormalization lives in the default domain, where
    ``onnx.checker`` would reject it, so that one norm is written in standard
    ops (it runs once per step).
    """
    import onnxscript
    from onnxscript import opset18 as op

    AttrType = onnx.defs.OpSchema.AttrType
    ms = onnxscript.values.Opset(MS_DOMAIN, 1)
    f, i32 = "tensor(float)", "tensor(int32)"
    skip_schema = _schema(
        "SkipSimplifiedLayerNormalization",
        [("input", f, False), ("skip", f, False), ("gamma", f, False), ("bias", f, True)],
        [("output", f, False), ("mean", f, True), ("inv_std_var", f, True), ("input_skip_bias_sum", f, True)],
        [("epsilon", AttrType.FLOAT, False)],
    )
    gqa_schema = _schema(
        "GroupQueryAttention",
        [("query", f, False), ("key", f, True), ("value", f, True), ("past_key", f, True), ("past_value", f, True),
         ("seqlens_k", i32, False), ("total_sequence_length", i32, False), ("cos_cache", f, True),
         ("sin_cache", f, True)],
        [("output", f, False), ("present_key", f, False), ("present_value", f, False)],
        [("num_heads", AttrType.INT, True), ("kv_num_heads", AttrType.INT, True), ("scale", AttrType.FLOAT, False),
         ("do_rotary", AttrType.INT, False), ("rotary_interleaved", AttrType.INT, False)],
    )  # fmt: skip
    skip_op = onnxscript.values.Op(ms, "SkipSimplifiedLayerNormalization", skip_schema)
    gqa_op = onnxscript.values.Op(ms, "GroupQueryAttention", gqa_schema)

    def skip_rms(x, skip, weight, eps: float):
        normed, _, _, total = skip_op(x, skip, weight, epsilon=eps, _outputs=4)
        return normed, total

    def rms(x, weight, eps: float):
        mean_sq = op.ReduceMean(op.Mul(x, x), op.Constant(value_ints=[-1]), keepdims=1)
        denom = op.Sqrt(op.Add(mean_sq, op.Constant(value_float=eps)))
        return op.Mul(op.Div(x, denom), weight)

    def gqa(qkv, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache, num_heads: int,
            kv_num_heads: int, scale: float):  # fmt: skip
        return gqa_op(
            qkv, None, None, past_key, past_value, seqlens_k, total_length, cos_cache, sin_cache,
            num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale, do_rotary=1, rotary_interleaved=0,
            _outputs=3,
        )  # fmt: skip

    def swiglu_standard(gate_up):
        gate, up = op.Split(gate_up, axis=-1, num_outputs=2)
        return op.Mul(op.Mul(gate, op.Sigmoid(gate)), up)

    def clamp_min(x, minimum: int):
        # precision floors (docs/FORMAT.md §6): one Max on the int64 bits scalar per distinct floor
        return op.Max(x, op.Constant(value_int=int(minimum)))

    def index_select(x, dim: int, index):
        return op.Gather(x, index, axis=dim)  # the exporter's default adds a Reshape and a Cast

    return {
        skip_rms_norm: skip_rms,
        rms_norm: rms,
        group_query_attention: gqa,
        swiglu: swiglu_standard,
        torch.ops.aten.index_select.default: index_select,
        torch.ops.aten.clamp_min.default: clamp_min,
    }
