"""The SEFPLinear function body alone: one node, stock onnxruntime, against the torch reference."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from otaro_export import ops
from otaro_export.export.onnx_sefp_function import DOMAIN, OP_TYPE, attach_function, register_schema
from otaro_export.packing import pack
from otaro_export.sefp import SUPPORTED_BITS, quantize

N, K = 40, 96  # K % 64 != 0: the padded last group must contribute nothing


def _single_node_model(packed, bias):
    register_schema()
    names = ["P0", "P1", "P2", "P3", "E"]
    inits = [numpy_helper.from_array(t.numpy(), n) for n, t in zip(names, (*packed.planes(), packed.exponents))]
    inputs = ["X", *names, "bits"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.numpy(), "B"))
        inputs.append("B")
    node = helper.make_node(OP_TYPE, inputs, ["Y"], domain=DOMAIN)
    graph = helper.make_graph(
        [node],
        "one_sefp_linear",
        [
            helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "S", K]),
            helper.make_tensor_value_info("bits", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "S", N])],
        inits,
    )
    model = attach_function(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
    onnx.checker.check_model(model, full_check=True)
    return ort.InferenceSession(model.SerializeToString())


@pytest.mark.parametrize("with_bias", [True, False])
def test_function_body_matches_reference_at_every_precision(with_bias):
    gen = torch.Generator().manual_seed(0)
    packed = pack(quantize(torch.randn(N, K, generator=gen)))
    bias = torch.randn(N, generator=gen) if with_bias else None
    session = _single_node_model(packed, bias)
    x = torch.randn(1, 5, K, generator=gen)
    for k in SUPPORTED_BITS:
        ref = ops.reference_sefp_linear(x, *packed.planes(), packed.exponents, ops.bits_tensor(k), bias)
        y = session.run(None, {"X": x.numpy(), "bits": np.array(k, np.int64)})[0]
        # exact weights on both sides; Gemm vs torch matmul summation order: ~1e-6 on outputs ~10
        np.testing.assert_allclose(y, ref.numpy(), rtol=0, atol=1e-4, err_msg=f"E5M{k}")


def test_function_body_rejects_out_of_range_bits():
    packed = pack(quantize(torch.randn(N, K, generator=torch.Generator().manual_seed(1))))
    session = _single_node_model(packed, None)
    x = np.zeros((1, 2, K), np.float32)
    for bad in (-1, 0, 2, 9, 100):
        with pytest.raises(Exception, match="SEFPLinear_bits_must_be_3_to_8"):
            session.run(None, {"X": x, "bits": np.array(bad, np.int64)})


def test_function_opset_must_match_and_be_new_enough():
    with pytest.raises(ValueError, match="opset >= 18"):
        attach_function(
            helper.make_model(helper.make_graph([], "g", [], []), opset_imports=[helper.make_opsetid("", 17)])
        )
