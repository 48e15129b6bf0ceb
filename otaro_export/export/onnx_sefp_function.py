"""The ONNX side of ``otaro::sefp_linear``: the ``ai.otaro::SEFPLinear`` schema and its function body.

Node: ``Y = SEFPLinear(X, P0, P1, P2, P3, E, bits[, B])`` (domain ``ai.otaro``,
version 1), inputs as in :mod:`otaro_export.ops` / :mod:`otaro_export.packing`.

The model carries a model-local ``FunctionProto`` of the same domain and name
whose body uses only standard ONNX ops, so stock onnxruntime runs the file
with no library, while an onnxruntime with the project's custom-op library
registered runs the fused kernel instead (a registered kernel wins over the
function). The body is written to be cheap at run time:

* everything that does not depend on ``bits`` (unpacking the planes into the
  uint8 magnitudes ``q`` and the signed group scales ``(-1)^s * 2^(e - 7)``)
  depends only on initializers, so onnxruntime constant-folds it once at
  session creation (memory: 5 bytes per weight while the session lives);
* per call: one ``BitwiseAnd`` with the mask of ``bits``, one ``Cast``, one
  ``Mul``, one ``Gemm`` (``transB``, bias as its optional C): vectorised
  element-wise ops only (a per-weight table ``Gather`` was much slower).

A function body is no range check (a raw out-of-range ``bits`` would index
another mask or wrap), so the body checks ``3 <= bits <= 8`` in-graph: the
selected mask is reshaped to ``[valid]`` with ``allowzero=1``, which fails
with an onnxruntime error naming the node ``SEFPLinear_bits_must_be_3_to_8``
when ``valid`` is 0. The runtime session also checks ``bits`` before calling
onnxruntime, so its users get a clean :class:`InvalidBitsError`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from otaro_export.sefp import SUPPORTED_BITS, mantissa_mask

DOMAIN = "ai.otaro"
OP_TYPE = "SEFPLinear"
OP_VERSION = 1
INPUTS = ["X", "P0", "P1", "P2", "P3", "E", "bits", "B"]
RANGE_CHECK_NODE = "SEFPLinear_bits_must_be_3_to_8"


def register_schema() -> None:
    """Register the op schema with onnx (needed before torch.onnx.export emits the node). Idempotent."""
    from onnx import defs

    if defs.has(OP_TYPE, DOMAIN):
        return
    P = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    schema = defs.OpSchema(
        OP_TYPE,
        DOMAIN,
        OP_VERSION,
        doc="y = x @ W_k^T + b with W stored in SEFP planes and k = bits chosen at run time (3..8)",
        inputs=[
            P("X", "tensor(float)", "activations [..., K]"),
            P("P0", "tensor(uint8)", "sign|q[7:5] nibble plane [N, G*32]"),
            P("P1", "tensor(uint8)", "q[4:3] plane [N, G*16]"),
            P("P2", "tensor(uint8)", "q[2:1] plane [N, G*16]"),
            P("P3", "tensor(uint8)", "q[0] plane [N, G*8]"),
            P("E", "tensor(int8)", "group exponents [N, G]"),
            P("bits", "tensor(int64)", "0-dim precision, 3..8"),
            P("B", "tensor(float)", "bias [N]", param_option=optional),
        ],
        outputs=[P("Y", "tensor(float)", "[..., N]")],
    )
    defs.register_schema(schema)


def _const(name: str, value: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(value, name))


def function_proto(opset: int) -> onnx.FunctionProto:
    """The standard-ops body of ``ai.otaro::SEFPLinear``; ``opset`` must equal the model's ONNX opset."""
    if opset < 18:
        raise ValueError(f"the SEFPLinear function body needs ONNX opset >= 18 (BitwiseAnd), got {opset}")
    u8 = np.uint8
    i64 = np.int64
    n = []

    def node(op, inputs, outputs, **attrs):
        n.append(helper.make_node(op, inputs, outputs, name=f"{op}_{outputs[0]}", **attrs))

    n += [
        _const("c15", np.array(15, u8)),
        _const("c7", np.array(7, u8)),
        _const("c3u", np.array(3, u8)),
        _const("c1u", np.array(1, u8)),
        _const("c4u", np.array(4, u8)),
        _const("c5u", np.array(5, u8)),
        _const("shift2", np.array([0, 2, 4, 6], u8).reshape(1, 1, 4, 1)),
        _const("shift1", np.arange(8, dtype=u8).reshape(1, 1, 8, 1)),
        _const("i1", np.array([1], i64)),
        _const("i8", np.array([8], i64)),
        _const("i16", np.array([16], i64)),
        _const("i32", np.array([32], i64)),
        _const("i64", np.array([64], i64)),
        _const("im1", np.array([-1], i64)),
        _const("i0", np.array([0], i64)),
        _const("bits_lo", np.array(SUPPORTED_BITS[0], i64)),
        _const("bits_hi", np.array(SUPPORTED_BITS[-1], i64)),
        _const("masks", np.array([mantissa_mask(k) for k in SUPPORTED_BITS], u8)),
        _const("minus2", np.array(-2.0, np.float32)),
        _const("one", np.array(1.0, np.float32)),
        _const("two", np.array(2.0, np.float32)),
        _const("seven", np.array(7.0, np.float32)),
    ]
    # -- bits-independent: folded by onnxruntime at session creation --
    node("Shape", ["E"], ["N"], start=0, end=1)
    node("Shape", ["E"], ["G"], start=1, end=2)
    node("Concat", ["N", "G", "i1", "i32"], ["shape32"], axis=0)
    node("Concat", ["N", "G", "i1", "i16"], ["shape16"], axis=0)
    node("Concat", ["N", "G", "i1", "i8"], ["shape8"], axis=0)
    node("Concat", ["N", "G", "i64"], ["shape64"], axis=0)
    # p0: low nibble = element i, high nibble = element i+32; nibble = sign<<3 | q>>5
    node("Reshape", ["P0", "shape32"], ["b0"])
    node("BitwiseAnd", ["b0", "c15"], ["lo"])
    node("BitShift", ["b0", "c4u"], ["hi"], direction="RIGHT")
    node("Concat", ["lo", "hi"], ["code4"], axis=2)
    node("Reshape", ["code4", "shape64"], ["code"])
    node("BitShift", ["code", "c3u"], ["sign"], direction="RIGHT")
    node("BitwiseAnd", ["code", "c7"], ["q75"])
    node("BitShift", ["q75", "c5u"], ["t0"], direction="LEFT")
    # p1 / p2: bits 2j..2j+1 of byte i = element i+16j; p3: bit j of byte i = element i+8j
    for plane, shifts, mask, shape, out, up in (
        ("P1", "shift2", "c3u", "shape16", "f1", 3),
        ("P2", "shift2", "c3u", "shape16", "f2", 1),
        ("P3", "shift1", "c1u", "shape8", "f3", 0),
    ):
        node("Reshape", [plane, shape], [f"{out}_b"])
        node("BitShift", [f"{out}_b", shifts], [f"{out}_s"], direction="RIGHT")
        node("BitwiseAnd", [f"{out}_s", mask], [f"{out}_m"])
        node("Reshape", [f"{out}_m", "shape64"], [out] if up == 0 else [f"{out}_r"])
        if up:
            n.append(_const(f"up{up}", np.array(up, u8)))
            node("BitShift", [f"{out}_r", f"up{up}"], [out], direction="LEFT")
    node("BitwiseOr", ["t0", "f1"], ["t1"])
    node("BitwiseOr", ["t1", "f2"], ["t2"])
    node("BitwiseOr", ["t2", "f3"], ["q"])  # uint8 [N, G, 64]
    node("Cast", ["sign"], ["sf"], to=TensorProto.FLOAT)
    node("Mul", ["sf", "minus2"], ["sf2"])
    node("Add", ["sf2", "one"], ["sign_pm"])  # +1 / -1
    node("Cast", ["E"], ["ef"], to=TensorProto.FLOAT)
    node("Sub", ["ef", "seven"], ["e7"])
    node("Pow", ["two", "e7"], ["scale2"])  # 2^(e-7), exact for integer exponents
    node("Unsqueeze", ["scale2", "im1"], ["scale"])  # [N, G, 1]
    node("Mul", ["sign_pm", "scale"], ["signed_scale"])  # float [N, G, 64]
    # -- per call: range check, one mask, BitwiseAnd + Cast + Mul, one Gemm --
    node("GreaterOrEqual", ["bits", "bits_lo"], ["ge"])
    node("LessOrEqual", ["bits", "bits_hi"], ["le"])
    node("And", ["ge", "le"], ["valid"])
    node("Cast", ["valid"], ["valid64"], to=TensorProto.INT64)
    node("Unsqueeze", ["valid64", "i0"], ["mask_shape"])  # [1] when valid, [0] when not
    node("Sub", ["bits", "bits_lo"], ["row_any"])
    node("Mul", ["row_any", "valid64"], ["row"])  # row 0 when invalid, so the named check below is what fails
    node("Gather", ["masks", "row"], ["mask_raw"], axis=0)
    n.append(helper.make_node("Reshape", ["mask_raw", "mask_shape"], ["mask"], name=RANGE_CHECK_NODE, allowzero=1))
    node("BitwiseAnd", ["q", "mask"], ["qk"])
    node("Cast", ["qk"], ["qkf"], to=TensorProto.FLOAT)
    node("Mul", ["qkf", "signed_scale"], ["wg"])
    node("Concat", ["N", "im1"], ["shapeNK"], axis=0)
    node("Reshape", ["wg", "shapeNK"], ["w_pad"])
    node("Shape", ["X"], ["K"], start=-1)
    node("Slice", ["w_pad", "i0", "K", "i1"], ["W"])  # drop the zero padding of the last group
    node("Concat", ["im1", "K"], ["shapeMK"], axis=0)
    node("Reshape", ["X", "shapeMK"], ["X2"])
    node("Gemm", ["X2", "W", "B"], ["Y2"], transB=1)
    node("Shape", ["X"], ["lead"], end=-1)
    node("Concat", ["lead", "N"], ["shapeY"], axis=0)
    node("Reshape", ["Y2", "shapeY"], ["Y"])
    return helper.make_function(
        DOMAIN,
        OP_TYPE,
        INPUTS,
        ["Y"],
        n,
        opset_imports=[helper.make_opsetid("", opset)],
    )


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function body (matching the model's default-domain opset) and the domain import."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("model has no default-domain opset import")
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name == OP_TYPE)]
    del model.functions[:]
    model.functions.extend([*kept, function_proto(opset)])
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model
