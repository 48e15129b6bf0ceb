"""onnx_fuse_swiglu: SEFPLinear -> Split / Sigmoid / Mul / Mul becomes one SEFPLinear with swiglu=1.

Small hand-built graphs: the exact pattern is folded (and the folded model computes the same
values on stock onnxruntime and with the project's kernels); anything else that reads an
intermediate value keeps the graph as it was.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from otaro_export.export.onnx_fuse_swiglu import fuse_swiglu
from otaro_export.export.onnx_sefp_function import DOMAIN, OP_TYPE, SWIGLU_ATTRIBUTE, attach_function
from otaro_export.packing import pack
from otaro_export.runtime_ops import ort_library
from otaro_export.sefp import quantize

N, K = 48, 64
PLANES = ["P0", "P1", "P2", "P3", "E"]


def _model(extra_nodes=(), extra_outputs=(), split_attrs=None) -> onnx.ModelProto:
    """X -> SEFPLinear -> Z -> Split -> gate, up -> Y = gate * Sigmoid(gate) * up (the exporter's SwiGLU)."""
    gen = torch.Generator().manual_seed(0)
    packed = pack(quantize(torch.randn(N, K, generator=gen)))
    inits = [numpy_helper.from_array(t.numpy(), n) for n, t in zip(PLANES, (*packed.planes(), packed.exponents))]
    split_attrs = {"axis": -1, "num_outputs": 2} if split_attrs is None else split_attrs
    nodes = [
        # as torch.onnx writes it: every schema attribute, swiglu's default 0 included
        helper.make_node(OP_TYPE, ["X", *PLANES, "bits"], ["Z"], domain=DOMAIN, act_int8_max_bits=5, swiglu=0),
        helper.make_node("Split", ["Z"], ["gate", "up"], **split_attrs),
        helper.make_node("Sigmoid", ["gate"], ["sig"]),
        helper.make_node("Mul", ["gate", "sig"], ["silu"]),
        helper.make_node("Mul", ["silu", "up"], ["Y"]),
        *extra_nodes,
    ]
    inputs = [
        helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, "S", K]),
        helper.make_tensor_value_info("bits", TensorProto.INT64, []),
    ]
    outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, "S", N // 2])]
    outputs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in extra_outputs]
    graph = helper.make_graph(nodes, "mlp", inputs, outputs, inits)
    graph.value_info.extend(
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("Z", "gate", "up", "sig", "silu")]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)])


def _run(model: onnx.ModelProto, x: np.ndarray, bits: int, library: bool) -> list[np.ndarray]:
    options = ort_library.session_options(1) if library else ort.SessionOptions()
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x, "bits": np.array(bits, np.int64)})


def test_the_exported_pattern_becomes_one_node_with_the_same_values():
    before = attach_function(_model())
    after = _model()
    assert fuse_swiglu(after) == 1
    assert [n.op_type for n in after.graph.node] == [OP_TYPE]
    node = after.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert list(node.output) == ["Y"] and attrs == {"act_int8_max_bits": 5, SWIGLU_ATTRIBUTE: 1}
    assert not after.graph.value_info  # the removed tensors' shape records went with them
    attach_function(after)
    onnx.checker.check_model(after, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 3, K)).astype(np.float32)
    for bits in (3, 8):
        reference = _run(before, x, bits, library=False)[0]
        # the function body computes the same four ops in the same order: equal values
        np.testing.assert_array_equal(_run(after, x, bits, library=False)[0], reference)
        # the library's kernel (exact SEFP weights, its own summation order and e^x): float32 roundings only
        np.testing.assert_allclose(_run(after, x, bits, library=True)[0], reference, rtol=1e-4, atol=1e-3)
    assert fuse_swiglu(after) == 0  # nothing left to fold


@pytest.mark.parametrize(
    "extra_nodes, extra_outputs",
    [
        ([helper.make_node("Identity", ["gate"], ["gate_copy"])], ["gate_copy"]),  # gate read elsewhere
        ([helper.make_node("Identity", ["Z"], ["z_copy"])], ["z_copy"]),  # Z read elsewhere
        ([], ["silu"]),  # an intermediate is a graph output
        ([helper.make_node("Identity", ["sig"], ["sig_copy"])], ["sig_copy"]),
    ],
)
def test_other_readers_of_an_intermediate_keep_the_graph(extra_nodes, extra_outputs):
    model = _model(extra_nodes, extra_outputs)
    before = model.SerializeToString()
    assert fuse_swiglu(model) == 0
    assert model.SerializeToString() == before


@pytest.mark.parametrize("split_attrs", [{"axis": 0, "num_outputs": 2}, {"axis": -1}])
def test_other_splits_are_not_a_swiglu(split_attrs):
    model = _model(split_attrs=split_attrs)
    assert fuse_swiglu(model) == 0 and len(model.graph.node) == 5
