"""otaro_llm::rms_norm / rotary_heads / swiglu / kv_attention: torch references vs the ExecuTorch kernels, bad shapes."""

import numpy as np
import pytest
import torch

from otaro_export.export import executorch_ops as ops
from otaro_export.export.contrib_ops import reference_rms_norm, reference_swiglu


class _Ops(torch.nn.Module):
    def forward(self, x, weight, qkv, cos, sin, gate_up):
        return (
            ops.rms_norm(x, weight, 1e-5),
            ops.rotary_heads(qkv, cos, sin, 0, 4, 16, True),
            ops.rotary_heads(qkv, cos, sin, 4, 2, 16, True),
            ops.rotary_heads(qkv, cos, sin, 6, 2, 16, False),
            ops.swiglu(gate_up),
        )


def _inputs(seq: int):
    g = torch.Generator().manual_seed(seq)
    return (
        torch.randn(1, seq, 48, generator=g) * 3,
        torch.rand(48, generator=g) + 0.5,
        torch.randn(1, seq, 8 * 16, generator=g),
        torch.rand(seq, 8, generator=g),
        torch.rand(seq, 8, generator=g),
        torch.randn(1, seq, 2 * 40, generator=g) * 4,
    )


@pytest.fixture(scope="module")
def method(tmp_path_factory):
    from executorch.exir import EdgeCompileConfig, to_edge
    from executorch.runtime import Runtime

    from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels

    seq = torch.export.Dim("seq", min=1, max=64)
    shapes = ({1: seq}, None, {1: seq}, {0: seq}, {0: seq}, {1: seq})
    ep = torch.export.export(_Ops(), _inputs(5), dynamic_shapes=shapes, strict=False)
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = tmp_path_factory.mktemp("llm-ops") / "ops.pte"
    path.write_bytes(program.buffer)
    load_executorch_kernels()
    return Runtime.get().load_program(path).load_method("forward")


def _reference(x, weight, qkv, cos, sin, gate_up):
    heads = qkv.reshape(1, qkv.shape[1], 8, 16)
    return (
        reference_rms_norm(x, weight, 1e-5),
        ops.rotate(heads[:, :, :4], cos, sin),
        ops.rotate(heads[:, :, 4:6], cos, sin),
        heads[:, :, 6:],
        reference_swiglu(gate_up),
    )


@pytest.mark.parametrize("seq", [1, 7])
def test_kernels_match_the_torch_references(method, seq):
    inputs = _inputs(seq)
    got = method.execute(list(inputs))
    want = _reference(*inputs)
    eager = _Ops()(*inputs)  # the ops' own torch implementations (what export traces)
    for g, w, e in zip(got, want, eager):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(e.numpy(), w.numpy(), rtol=1e-6, atol=1e-6)


def test_rotation_is_the_onnx_graphs_rotate_half():
    """Same convention as the ONNX graph's GroupQueryAttention reference (non-interleaved halves)."""
    from otaro_export.export.contrib_ops import rotate_half

    x, cos, sin = torch.randn(1, 3, 2, 16), torch.rand(3, 8), torch.rand(3, 8)
    want = rotate_half(x.transpose(1, 2), cos, sin).transpose(1, 2)
    torch.testing.assert_close(ops.rotate(x, cos, sin), want)


def test_bad_shapes_fail_the_call_without_crashing(method):
    x, weight, qkv, cos, sin, gate_up = _inputs(3)
    with pytest.raises(RuntimeError):
        method.execute([x, weight, qkv, cos[:2], sin[:2], gate_up])  # cos/sin rows != sequence length


CACHE_LEN, HEADS, KV_HEADS = 40, 6, 2
#: 64: the vector path (SmolLM2's head size); 24 (not a multiple of 16): the kernel's one-position-at-a-time path
HEAD_DIMS = (64, 24)
#: (new tokens, first position) of consecutive calls: a prompt, decode steps, a chunk, then up to the last row
STEPS = [(5, 0), (1, 5), (1, 6), (3, 7), (1, 10), (CACHE_LEN - 11, 11)]


class _Attention(torch.nn.Module):
    """otaro_llm::kv_attention as the fused decoder calls it: caches are mutable buffers, start a SymInt."""

    def __init__(self, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.register_buffer("k_cache", torch.zeros(1, CACHE_LEN, KV_HEADS, head_dim), persistent=False)
        self.register_buffer("v_cache", torch.zeros(1, CACHE_LEN, KV_HEADS, head_dim), persistent=False)

    def forward(self, qkv, cos, sin, input_pos):
        start = input_pos[0].item()
        torch._check(start >= 0)
        torch._check(start + qkv.shape[1] <= CACHE_LEN)
        return ops.kv_attention(
            qkv, cos, sin, self.k_cache, self.v_cache, start, HEADS, KV_HEADS, self.head_dim, self.head_dim**-0.5
        )


def _attention_inputs(seq: int, start: int, head_dim: int):
    g = torch.Generator().manual_seed(100 * seq + start)
    angles = (torch.arange(start, start + seq).unsqueeze(1) + 1.0) * torch.rand(1, head_dim // 2, generator=g)
    return (
        torch.randn(1, seq, (HEADS + 2 * KV_HEADS) * head_dim, generator=g) * 2,
        torch.cos(angles),
        torch.sin(angles),
        torch.tensor([start]),
    )


@pytest.fixture(scope="module", params=HEAD_DIMS)
def attention(request, tmp_path_factory):
    from executorch.exir import EdgeCompileConfig, to_edge

    from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels

    head_dim = request.param
    seq = torch.export.Dim("seq", min=1, max=CACHE_LEN)
    shapes = ({1: seq}, {0: seq}, {0: seq}, None)
    module = _Attention(head_dim)
    ep = torch.export.export(module, _attention_inputs(3, 2, head_dim), dynamic_shapes=shapes, strict=False)
    program = to_edge(ep, compile_config=EdgeCompileConfig(_check_ir_validity=False)).to_executorch()
    path = tmp_path_factory.mktemp("llm-attention") / "attention.pte"
    path.write_bytes(program.buffer)
    load_executorch_kernels()
    return head_dim, path


def _method(path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(path).load_method("forward")  # fresh caches (zeros)


def test_attention_kernel_matches_the_reference_call_after_call(attention):
    """Each call writes its rows into the method's caches; later calls attend over them."""
    head_dim, path = attention
    method, eager = _method(path), _Attention(head_dim)  # eager: the torch reference on its own buffers
    for seq, start in STEPS:
        inputs = _attention_inputs(seq, start, head_dim)
        (got,) = method.execute(list(inputs))
        want = eager(*inputs)
        # float32 sums over <= 40 positions and <= 64 dims of O(1) terms, exp to ~2e-7: ~1e-6 observed
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5, err_msg=f"call {seq}@{start}")


def test_a_fresh_sequence_never_reads_rows_of_an_earlier_longer_one(attention):
    head_dim, path = attention
    method = _method(path)
    short = _attention_inputs(4, 0, head_dim)
    (first,) = method.execute(list(short))
    for seq, start in STEPS:  # fill the whole cache with another sequence
        method.execute(list(_attention_inputs(seq, start, head_dim)))
    (again,) = method.execute(list(short))
    np.testing.assert_array_equal(again.numpy(), first.numpy())


def test_attention_rejects_positions_past_the_cache(attention):
    head_dim, path = attention
    qkv, cos, sin, _ = _attention_inputs(3, 0, head_dim)
    with pytest.raises(RuntimeError):
        _method(path).execute([qkv, cos, sin, torch.tensor([CACHE_LEN - 2])])


def _textbook_attention(q, k_cache, v_cache, start, scale):
    """Each query row on its own, in float64: softmax(scale q . k) . v over the cache rows 0 .. its position."""
    seq, heads, group = q.shape[1], q.shape[2], q.shape[2] // k_cache.shape[2]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for t in range(seq):
        for h in range(heads):
            keys = k_cache[0, : start + t + 1, h // group].double()
            values = v_cache[0, : start + t + 1, h // group].double()
            out[0, t, h] = torch.softmax(keys @ q[0, t, h].double() * scale, dim=0) @ values
    return out


@pytest.mark.parametrize(("seq", "start"), [(1, 0), (1, 17), (5, 0), (7, 11)])
def test_the_reference_attention_is_causal_grouped_query_attention(seq, start):
    g = torch.Generator().manual_seed(seq + start)
    q = torch.randn(1, seq, HEADS, 16, generator=g)
    k_cache, v_cache = torch.randn(2, 1, CACHE_LEN, KV_HEADS, 16, generator=g)
    got = ops.reference_sdpa(q, k_cache, v_cache, start, 0.25)
    np.testing.assert_allclose(got.numpy(), _textbook_attention(q, k_cache, v_cache, start, 0.25).numpy(), 1e-5, 1e-5)


def test_swiglu_kernel_is_exact_to_float_rounding_over_the_whole_range(method):
    """The kernel's exp is a polynomial: check SiLU * up against float64 where exp under- or overflows too."""
    x, weight, qkv, cos, sin, _ = _inputs(1)
    gate = torch.linspace(-120, 120, 40 * 1).reshape(1, 1, 40)
    gate_up = torch.cat([gate, torch.linspace(-3, 3, 40).reshape(1, 1, 40)], dim=-1)
    got = method.execute([x, weight, qkv, cos, sin, gate_up])[-1].double()
    g, up = gate.double(), gate_up[..., 40:].double()
    want = g * torch.sigmoid(g) * up
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6, atol=1e-30)
