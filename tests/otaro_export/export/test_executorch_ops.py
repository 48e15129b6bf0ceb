"""otaro_llm::rms_norm / rotary_heads / swiglu: torch references vs the ExecuTorch kernels, and bad shapes."""

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
