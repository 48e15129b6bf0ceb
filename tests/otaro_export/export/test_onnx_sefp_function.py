"""The SEFP function bodies alone: one node, stock onnxruntime, against the torch reference ops.

Every reconstruction rule (floor: no L; center; a fitted-like table; a generic
table whose rows for k >= 5 are not affine, so the per-weight lookup branch runs)
at every precision, for SEFPLinear and SEFPEmbedding.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from otaro_export import ops
from otaro_export.export.onnx_sefp_function import (
    DOMAIN,
    EMBEDDING_OP_TYPE,
    IDS_CHECK_NODE,
    LEVELS_OVERLOAD,
    OP_TYPE,
    attach_function,
    register_schema,
)
from otaro_export.packing import pack
from otaro_export.sefp import SUPPORTED_BITS, center_levels, quantize

N, K = 40, 96  # K % 64 != 0: the padded last group must contribute nothing
PLANES = ["P0", "P1", "P2", "P3", "E"]


def _tables():
    gen = torch.Generator().manual_seed(7)
    fitted = center_levels()
    fitted[0, :8] = torch.tensor([0.0, 21, 52, 90, 131, 160, 201, 240])
    fitted[1, :16] = torch.sort(torch.rand(16, generator=gen) * 250).values
    generic = fitted.clone()
    for row in range(2, 6):
        count = 1 << (row + 3)
        generic[row, :count] = torch.rand(count, generator=gen) * 255
    return {"floor": None, "center": center_levels(), "fitted": fitted, "generic": generic}


RULES = list(_tables())


def _session(packed, *, bias=None, levels=None, embedding=False, in_features=K, act_int8_max_bits=None, swiglu=None):
    register_schema()
    inits = [numpy_helper.from_array(t.numpy(), n) for n, t in zip(PLANES, (*packed.planes(), packed.exponents))]
    if embedding:
        inputs = ["ids", *PLANES, "bits"]
        first = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])
        out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["B", "S", in_features])
        attrs = {"in_features": in_features}
    else:
        inputs = ["X", *PLANES, "bits", "B" if bias is not None else ""]
        first = helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "S", K])
        out = helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "S", N // 2 if swiglu else N])
        attrs = {} if act_int8_max_bits is None else {"act_int8_max_bits": act_int8_max_bits}
        if swiglu is not None:
            attrs["swiglu"] = swiglu
        if bias is not None:
            inits.append(numpy_helper.from_array(bias.numpy(), "B"))
    if levels is not None:
        inits.append(numpy_helper.from_array(levels.numpy(), "L"))
        inputs.append("L")
    while inputs[-1] == "":
        inputs.pop()
    op = EMBEDDING_OP_TYPE if embedding else OP_TYPE
    node = helper.make_node(op, inputs, ["Y"], domain=DOMAIN, **attrs)
    bits = helper.make_tensor_value_info("bits", TensorProto.INT64, [])
    graph = helper.make_graph([node], "one_sefp_node", [first, bits], [out], inits)
    model = attach_function(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
    assert model.graph.node[0].overload == (LEVELS_OVERLOAD if levels is not None else "")
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _packed(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return pack(quantize(torch.randn(N, K, generator=gen))), torch.randn(N, generator=gen)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_body_matches_reference_at_every_precision(rule, with_bias):
    packed, bias = _packed()
    bias = bias if with_bias else None
    levels = _tables()[rule]
    session = _session(packed, bias=bias, levels=levels)
    x = torch.randn(1, 5, K, generator=torch.Generator().manual_seed(1))
    for k in SUPPORTED_BITS:
        ref = ops.reference_sefp_linear(x, *packed.planes(), packed.exponents, ops.bits_tensor(k), bias, levels)
        y = session.run(None, {"X": x.numpy(), "bits": np.array(k, np.int64)})[0]
        # exact weights on both sides; Gemm vs torch matmul summation order: ~1e-6 on outputs ~10
        np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=1e-4, err_msg=f"{rule} E5M{k}")


@pytest.mark.parametrize("rule", ["floor", "fitted"])
def test_linear_body_int8_activations(rule):
    """With act_int8_max_bits = 4 the body quantizes X (docs/FORMAT.md §9) at E5M3/E5M4 only; zero and
    non-finite blocks are kept as they are."""
    from otaro_export import activation_quant as aq

    packed, bias = _packed()
    levels = _tables()[rule]
    session = _session(packed, bias=bias, levels=levels, act_int8_max_bits=4)
    x = torch.randn(1, 5, K, generator=torch.Generator().manual_seed(2)) * 2
    x[0, 1, :64] = 0.0
    x[0, 2, 70] = float("inf")
    x[0, 3, 5] = float("nan")
    for k in SUPPORTED_BITS:
        xq = aq.fake_quantize(x) if k <= 4 else x
        ref = ops.reference_sefp_linear(xq, *packed.planes(), packed.exponents, ops.bits_tensor(k), bias, levels)
        y = session.run(None, {"X": x.numpy(), "bits": np.array(k, np.int64)})[0]
        np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=1e-4, err_msg=f"{rule} E5M{k}")  # NaN == NaN here
    assert not np.allclose(
        session.run(None, {"X": x.numpy(), "bits": np.array(3, np.int64)})[0][0, 0],
        _session(packed, bias=bias, levels=levels).run(None, {"X": x.numpy(), "bits": np.array(3, np.int64)})[0][0, 0],
    )


@pytest.mark.parametrize("levels", [False, True])
def test_linear_body_swiglu(levels):
    """swiglu=1: the body outputs silu(Z[..., :N/2]) * Z[..., N/2:] (N/2 columns); swiglu=0 is the plain linear."""
    packed, bias = _packed()
    table = _tables()["fitted"] if levels else None
    gated = _session(packed, bias=bias, levels=table, swiglu=1)
    plain = _session(packed, bias=bias, levels=table, swiglu=0)
    x = torch.randn(1, 5, K, generator=torch.Generator().manual_seed(3))
    for k in (3, 8):
        z = ops.reference_sefp_linear(x, *packed.planes(), packed.exponents, ops.bits_tensor(k), bias, table)
        ref = torch.nn.functional.silu(z[..., : N // 2]) * z[..., N // 2 :]
        feed = {"X": x.numpy(), "bits": np.array(k, np.int64)}
        y = gated.run(None, feed)[0]
        assert y.shape == (1, 5, N // 2)
        # Z's halves within 1e-4 (test_linear_body_matches_reference_at_every_precision); silu's slope is in
        # [-0.1, 1.1], so the product moves by at most 1.1e-4 |up| + 1e-4 |silu(gate)|, plus a few float32
        # roundings of onnxruntime's Sigmoid and Muls (1e-6 relative)
        gate, up = z[..., : N // 2], z[..., N // 2 :]
        bound = 1.1e-4 * up.abs() + 1e-4 * torch.nn.functional.silu(gate).abs() + 1e-6 * ref.abs()
        err = (torch.from_numpy(y) - ref).abs()
        assert bool((err <= bound).all()), f"E5M{k}: max err {err.max():.3g}"
        np.testing.assert_allclose(plain.run(None, feed)[0], z.numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("rule", RULES)
def test_embedding_body_gathers_exact_rows_at_every_precision(rule):
    packed, _ = _packed(2)
    levels = _tables()[rule]
    session = _session(packed, levels=levels, embedding=True)
    ids = torch.tensor([[0, N - 1, 5], [7, 7, 1]])
    for k in SUPPORTED_BITS:
        ref = ops.reference_sefp_embedding(ids, *packed.planes(), packed.exponents, ops.bits_tensor(k), K, levels)
        y = session.run(None, {"ids": ids.numpy(), "bits": np.array(k, np.int64)})[0]
        assert y.shape == (2, 3, K)
        np.testing.assert_array_equal(y, ref.numpy(), err_msg=f"{rule} E5M{k}")


def test_embedding_body_honours_in_features():
    packed = pack(quantize(torch.randn(N, 70)))  # 2 groups, 70 features
    session = _session(packed, embedding=True, in_features=70)
    ids = np.array([[3]])
    y = session.run(None, {"ids": ids, "bits": np.array(8, np.int64)})[0]
    ref = ops.reference_sefp_embedding(
        torch.from_numpy(ids), *packed.planes(), packed.exponents, ops.bits_tensor(8), 70
    )
    np.testing.assert_array_equal(y, ref.numpy())


@pytest.mark.parametrize("rule", ["floor", "fitted"])
def test_bodies_reject_out_of_range_bits(rule):
    packed, _ = _packed(1)
    levels = _tables()[rule]
    linear = _session(packed, levels=levels)
    embedding = _session(packed, levels=levels, embedding=True)
    for bad in (-1, 0, 2, 9, 100):
        bits = np.array(bad, np.int64)
        with pytest.raises(Exception, match="SEFPLinear_bits_must_be_3_to_8"):
            linear.run(None, {"X": np.zeros((1, 2, K), np.float32), "bits": bits})
        with pytest.raises(Exception, match="SEFPEmbedding_bits_must_be_3_to_8"):
            embedding.run(None, {"ids": np.zeros((1, 2), np.int64), "bits": bits})


@pytest.mark.parametrize("bad", [-1, N, 10**6])
def test_embedding_body_rejects_ids_out_of_range(bad):
    packed, _ = _packed(1)
    session = _session(packed, embedding=True)
    with pytest.raises(Exception, match=IDS_CHECK_NODE):
        session.run(None, {"ids": np.array([[0, bad]]), "bits": np.array(5, np.int64)})


def test_attach_function_adds_only_the_bodies_in_use():
    packed, _ = _packed()
    register_schema()
    inits = [numpy_helper.from_array(t.numpy(), n) for n, t in zip(PLANES, (*packed.planes(), packed.exponents))]
    inits.append(numpy_helper.from_array(center_levels().numpy(), "L"))
    nodes = [
        helper.make_node(OP_TYPE, ["X", *PLANES, "bits"], ["Y1"], domain=DOMAIN),
        helper.make_node(OP_TYPE, ["X", *PLANES, "bits", "", "L"], ["Y2"], domain=DOMAIN),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, K]),
            helper.make_tensor_value_info("bits", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, [2, N]) for y in ("Y1", "Y2")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
    attach_function(model)
    assert model.ir_version == 10  # overloads need IR 10
    assert sorted((f.name, f.overload) for f in model.functions) == [(OP_TYPE, ""), (OP_TYPE, LEVELS_OVERLOAD)]
    assert [n.overload for n in model.graph.node] == ["", LEVELS_OVERLOAD]
    onnx.checker.check_model(model, full_check=True)
    x = torch.randn(2, K)
    y1, y2 = ort.InferenceSession(model.SerializeToString()).run(None, {"X": x.numpy(), "bits": np.array(4)})
    for y, levels in ((y1, None), (y2, center_levels())):
        ref = ops.reference_sefp_linear(x, *packed.planes(), packed.exponents, ops.bits_tensor(4), None, levels)
        np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=1e-4)
    attach_function(model)  # idempotent
    assert len(model.functions) == 2


def test_function_opset_must_match_and_be_new_enough():
    with pytest.raises(ValueError, match="opset >= 18"):
        attach_function(
            helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
        )
