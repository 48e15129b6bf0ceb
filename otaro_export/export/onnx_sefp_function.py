"""The ONNX side of the SEFP ops: the ``ai.otaro`` schemas and their standard-op function bodies.

Nodes (domain ``ai.otaro``, version 1; docs/FORMAT.md §5):

* ``Y = SEFPLinear(X, P0, P1, P2, P3, E, bits[, B[, L]])`` (``B`` may be the
  empty name when ``L`` is given), as :func:`otaro_export.ops.sefp_linear`;
* ``Y = SEFPEmbedding(ids, P0, P1, P2, P3, E, bits[, L])`` with the int
  attribute ``in_features``, as :func:`otaro_export.ops.sefp_embedding`.

``L`` is a reconstruction table, float32 ``[6, 256]`` (docs/FORMAT.md §3);
without it the paper's ``floor`` rule applies. ``SEFPLinear``'s int attribute
``act_int8_max_bits`` (default 0: never) turns on int8 activations
(docs/FORMAT.md §9): a call at ``bits <= act_int8_max_bits`` computes
``fq(X) @ W_k^T + B`` (:mod:`otaro_export.activation_quant`); the function bodies
do the same in float ops. Its int attribute ``swiglu`` (default 0) set to 1 makes the
node output ``silu(Z[..., :N/2]) * Z[..., N/2:]`` of its result ``Z``, ``[..., N/2]``:
the MLP of a packed ``[gate | up]`` projection in one node
(:mod:`otaro_export.export.onnx_fuse_swiglu` sets it).

The model carries model-local ``FunctionProto``\\ s of the same domain and names
whose bodies use only standard ONNX ops, so stock onnxruntime runs the file
with no library, while an onnxruntime with the project's custom-op library
registered runs the fused kernels instead (a registered kernel wins over the
function). A node that passes ``L`` gets the function overload ``"levels"``
(:func:`attach_function` sets it; ONNX IR >= 10): a function body cannot test
whether an optional input was given, so each form has its own body, and the
``floor`` one stays as lean as before.

The linear bodies are written to be cheap at run time:

* everything that does not depend on ``bits`` (unpacking the planes into the
  uint8 magnitudes ``q`` and the signed group scales ``(-1)^s * 2^(e - 7)``)
  depends only on initializers, so onnxruntime constant-folds it once at
  session creation (memory: 5 bytes per weight while the session lives);
* per call: one ``BitwiseAnd`` with the mask of ``bits``, one ``Cast``, one
  ``Mul``, one ``Gemm`` (``transB``, bias as its optional C): vectorised
  element-wise ops only (a per-weight table ``Gather`` was much slower);
* with ``L``: the selected row is checked for the form ``j * 2^(8-k) + c``
  (floor: c = 0, center: c = 2^(7-k)); such a row adds one ``Add`` of ``c``,
  any other row decodes by a per-weight ``Gather`` (slower, exact).

The embedding bodies gather the rows of ``ids`` from the planes first and
unpack only those (a decode step reads one row, never the table).

A function body is no range check (a raw out-of-range ``bits`` would index
another mask or wrap; ONNX ``Gather`` accepts negative ids), so the bodies check
in-graph: a tensor is reshaped to a size that is only consistent when the
values are valid (``allowzero=1``), which fails with an onnxruntime error naming
the node ``SEFPLinear_bits_must_be_3_to_8`` / ``SEFPEmbedding_bits_must_be_3_to_8``
or ``SEFPEmbedding_ids_out_of_range``. The runtime session also checks ``bits``
before calling onnxruntime, so its users get a clean :class:`InvalidBitsError`.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from otaro_export.packing import PLANE_BYTES_PER_GROUP
from otaro_export.sefp import STORED_MANTISSA_BITS, SUPPORTED_BITS, mantissa_mask

DOMAIN = "ai.otaro"
OP_TYPE = "SEFPLinear"
EMBEDDING_OP_TYPE = "SEFPEmbedding"
OP_VERSION = 1
INPUTS = ["X", "P0", "P1", "P2", "P3", "E", "bits", "B", "L"]
EMBEDDING_INPUTS = ["ids", "P0", "P1", "P2", "P3", "E", "bits", "L"]
#: function overload of nodes that pass a levels table L
LEVELS_OVERLOAD = "levels"
RANGE_CHECK_NODE = "SEFPLinear_bits_must_be_3_to_8"
EMBEDDING_RANGE_CHECK_NODE = "SEFPEmbedding_bits_must_be_3_to_8"
IDS_CHECK_NODE = "SEFPEmbedding_ids_out_of_range"
#: SEFPLinear's attribute: 0, or int8 activations at bits <= it (docs/FORMAT.md §9)
INT8_ATTRIBUTE = "act_int8_max_bits"
#: SEFPLinear's attribute: 1 = output silu(gate) * up of the result [gate | up] (docs/FORMAT.md §5)
SWIGLU_ATTRIBUTE = "swiglu"
#: ONNX IR version that has function overloads
_OVERLOAD_IR_VERSION = 10


def register_schema() -> None:
    """Register both op schemas with onnx (needed before torch.onnx.export emits the nodes). Idempotent."""
    from onnx import defs

    P = defs.OpSchema.FormalParameter
    optional = defs.OpSchema.FormalParameterOption.Optional
    planes = [
        P("P0", "tensor(uint8)", "sign|q[7:5] nibble plane [N, G*32]"),
        P("P1", "tensor(uint8)", "q[4:3] plane [N, G*16]"),
        P("P2", "tensor(uint8)", "q[2:1] plane [N, G*16]"),
        P("P3", "tensor(uint8)", "q[0] plane [N, G*8]"),
        P("E", "tensor(int8)", "group exponents [N, G]"),
        P("bits", "tensor(int64)", "0-dim precision, 3..8"),
    ]
    levels = P("L", "tensor(float)", "reconstruction levels [6, 256]", param_option=optional)
    if not defs.has(OP_TYPE, DOMAIN):
        defs.register_schema(
            defs.OpSchema(
                OP_TYPE,
                DOMAIN,
                OP_VERSION,
                doc="y = x @ W_k^T + b with W stored in SEFP planes and k = bits chosen at run time (3..8)",
                inputs=[
                    P("X", "tensor(float)", "activations [..., K]"),
                    *planes,
                    P("B", "tensor(float)", "bias [N]", param_option=optional),
                    levels,
                ],
                outputs=[P("Y", "tensor(float)", "[..., N], or [..., N/2] with swiglu=1")],
                attributes=[
                    defs.OpSchema.Attribute(
                        INT8_ATTRIBUTE,
                        helper.make_attribute(INT8_ATTRIBUTE, 0),
                        "0, or int8 activations (per-64-block dynamic quantization) at bits <= this",
                    ),
                    defs.OpSchema.Attribute(
                        SWIGLU_ATTRIBUTE,
                        helper.make_attribute(SWIGLU_ATTRIBUTE, 0),
                        "1: Y = silu(Z[..., :N/2]) * Z[..., N/2:] of the result Z = [gate | up]",
                    ),
                ],
            )
        )
    if not defs.has(EMBEDDING_OP_TYPE, DOMAIN):
        defs.register_schema(
            defs.OpSchema(
                EMBEDDING_OP_TYPE,
                DOMAIN,
                OP_VERSION,
                doc="rows ids of W_k, W stored in SEFP planes and k = bits chosen at run time (3..8)",
                inputs=[P("ids", "tensor(int64)", "row ids, any shape, in [0, N)"), *planes, levels],
                outputs=[P("Y", "tensor(float)", "[*ids.shape, in_features]")],
                attributes=[
                    defs.OpSchema.Attribute("in_features", AttributeProto.INT, "row length K (<= G*64)", required=True)
                ],
            )
        )


class _Body:
    """Collects the nodes of one function body; names are local to the function."""

    def __init__(self, op: str):
        self.op = op
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.nodes.append(
            helper.make_node("Constant", [], [name], name=f"const_{name}", value=numpy_helper.from_array(value, name))
        )
        return name

    def node(self, op, inputs, outputs, name=None, **attrs) -> None:
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name or f"{op}_{outputs[0]}", **attrs))

    def attribute_const(self, name: str, attribute: str) -> str:
        """An int64 scalar ``name`` holding the calling node's int attribute ``attribute`` (its default if unset)."""
        const = helper.make_node("Constant", [], [name], name=f"const_{attribute}")
        const.attribute.append(helper.make_attribute_ref("value_int", AttributeProto.INT))
        const.attribute[0].ref_attr_name = attribute
        self.nodes.append(const)
        return name

    def constants(self) -> None:
        u8, i64 = np.uint8, np.int64
        for name, value in {
            "c15": np.array(15, u8), "c7": np.array(7, u8), "c3u": np.array(3, u8), "c1u": np.array(1, u8),
            "c4u": np.array(4, u8), "c5u": np.array(5, u8), "up3": np.array(3, u8),
            "shift2": np.array([0, 2, 4, 6], u8).reshape(1, 1, 4, 1),
            "shift1": np.arange(8, dtype=u8).reshape(1, 1, 8, 1),
            "i1": np.array([1], i64), "i8": np.array([8], i64), "i16": np.array([16], i64),
            "i32": np.array([32], i64), "i64": np.array([64], i64), "im1": np.array([-1], i64),
            "i0": np.array([0], i64), "bits_lo": np.array(SUPPORTED_BITS[0], i64),
            "bits_hi": np.array(SUPPORTED_BITS[-1], i64), "mant": np.array(STORED_MANTISSA_BITS, i64),
            "masks": np.array([mantissa_mask(k) for k in SUPPORTED_BITS], u8),
            "minus2": np.array(-2.0, np.float32), "one": np.array(1.0, np.float32),
            "two": np.array(2.0, np.float32), "seven": np.array(7.0, np.float32),
        }.items():  # fmt: skip
            self.const(name, value)
        assert PLANE_BYTES_PER_GROUP == {"p0": 32, "p1": 16, "p2": 16, "p3": 8}, "body written for this layout"

    def unpack(self, planes: list[str], exponents: str) -> None:
        """Planes [R, G*bytes] and exponents [R, G] -> uint8 ``q`` and float ``signed_scale`` [R, G, 64]."""
        node = self.node
        node("Shape", [exponents], ["R"], start=0, end=1)
        node("Shape", [exponents], ["G"], start=1, end=2)
        node("Concat", ["R", "G", "i1", "i32"], ["shape32"], axis=0)
        node("Concat", ["R", "G", "i1", "i16"], ["shape16"], axis=0)
        node("Concat", ["R", "G", "i1", "i8"], ["shape8"], axis=0)
        node("Concat", ["R", "G", "i64"], ["shape64"], axis=0)
        # p0: low nibble = element i, high nibble = element i+32; nibble = sign<<3 | q>>5
        node("Reshape", [planes[0], "shape32"], ["b0"])
        node("BitwiseAnd", ["b0", "c15"], ["lo"])
        node("BitShift", ["b0", "c4u"], ["hi"], direction="RIGHT")
        node("Concat", ["lo", "hi"], ["code4"], axis=2)
        node("Reshape", ["code4", "shape64"], ["code"])
        node("BitShift", ["code", "c3u"], ["sign"], direction="RIGHT")
        node("BitwiseAnd", ["code", "c7"], ["q75"])
        node("BitShift", ["q75", "c5u"], ["t0"], direction="LEFT")
        # p1 / p2: bits 2j..2j+1 of byte i = element i+16j; p3: bit j of byte i = element i+8j
        for plane, shifts, mask, shape, out, up in (
            (planes[1], "shift2", "c3u", "shape16", "f1", "up3"),
            (planes[2], "shift2", "c3u", "shape16", "f2", "c1u"),
            (planes[3], "shift1", "c1u", "shape8", "f3", None),
        ):
            node("Reshape", [plane, shape], [f"{out}_b"])
            node("BitShift", [f"{out}_b", shifts], [f"{out}_s"], direction="RIGHT")
            node("BitwiseAnd", [f"{out}_s", mask], [f"{out}_m"])
            node("Reshape", [f"{out}_m", "shape64"], [out] if up is None else [f"{out}_r"])
            if up is not None:
                node("BitShift", [f"{out}_r", up], [out], direction="LEFT")
        node("BitwiseOr", ["t0", "f1"], ["t1"])
        node("BitwiseOr", ["t1", "f2"], ["t2"])
        node("BitwiseOr", ["t2", "f3"], ["q"])  # uint8 [R, G, 64]
        node("Cast", ["sign"], ["sf"], to=TensorProto.FLOAT)
        node("Mul", ["sf", "minus2"], ["sf2"])
        node("Add", ["sf2", "one"], ["sign_pm"])  # +1 / -1
        node("Cast", [exponents], ["ef"], to=TensorProto.FLOAT)
        node("Sub", ["ef", "seven"], ["e7"])
        node("Pow", ["two", "e7"], ["scale2"])  # 2^(e-7), exact for integer exponents
        node("Unsqueeze", ["scale2", "im1"], ["scale"])  # [R, G, 1]
        node("Mul", ["sign_pm", "scale"], ["signed_scale"])  # float [R, G, 64]

    def masked(self, check_node: str) -> None:
        """``qk = q AND mask(bits)``, with the in-graph 3 <= bits <= 8 check; also ``row`` = bits - 3."""
        node = self.node
        node("GreaterOrEqual", ["bits", "bits_lo"], ["ge"])
        node("LessOrEqual", ["bits", "bits_hi"], ["le"])
        node("And", ["ge", "le"], ["valid"])
        node("Cast", ["valid"], ["valid64"], to=TensorProto.INT64)
        node("Unsqueeze", ["valid64", "i0"], ["mask_shape"])  # [1] when valid, [0] when not
        node("Sub", ["bits", "bits_lo"], ["row_any"])
        node("Mul", ["row_any", "valid64"], ["row"])  # row 0 when invalid, so the named check below is what fails
        node("Gather", ["masks", "row"], ["mask_raw"], axis=0)
        node("Reshape", ["mask_raw", "mask_shape"], ["mask"], name=check_node, allowzero=1)
        node("BitwiseAnd", ["q", "mask"], ["qk"])

    def int8_activations(self, x: str, k: str, out: str) -> None:
        """``out`` = fq(x) when ``bits <= act_int8_max_bits`` (the attribute, default 0), else ``x``."""
        node = self.node
        self.attribute_const("int8_max_bits", INT8_ATTRIBUTE)
        self.const("zero_bits", np.array(0, np.int64))
        node("Greater", ["int8_max_bits", "zero_bits"], ["int8_on"])
        node("LessOrEqual", ["bits", "int8_max_bits"], ["int8_low"])
        node("And", ["int8_on", "int8_low"], ["int8_now"])
        keep = helper.make_graph(
            [helper.make_node("Identity", [x], ["x_float"], name="Identity_x_float")],
            f"{self.op}_float_activations",
            [],
            [helper.make_tensor_value_info("x_float", TensorProto.FLOAT, [None, None])],
        )
        node("If", ["int8_now"], [out], then_branch=_int8_branch(x, k, self.op), else_branch=keep)

    def swiglu(self, z: str, out: str) -> None:
        """``out`` = silu(gate) * up of ``z`` = [gate | up] when the attribute ``swiglu`` is 1, else ``z``."""
        node = self.node
        self.attribute_const("swiglu_attr", SWIGLU_ATTRIBUTE)
        self.const("swiglu_on_value", np.array(1, np.int64))
        node("Equal", ["swiglu_attr", "swiglu_on_value"], ["swiglu_on"])
        rank_free = [helper.make_tensor_value_info("swiglu_y", TensorProto.FLOAT, None)]
        gated = helper.make_graph(
            [
                helper.make_node("Split", [z], ["sg_gate", "sg_up"], name="Split_gate_up", axis=-1, num_outputs=2),
                helper.make_node("Sigmoid", ["sg_gate"], ["sg_sigmoid"], name="Sigmoid_gate"),
                helper.make_node("Mul", ["sg_gate", "sg_sigmoid"], ["sg_silu"], name="Mul_silu"),
                helper.make_node("Mul", ["sg_silu", "sg_up"], ["swiglu_y"], name="Mul_up"),
            ],
            f"{self.op}_swiglu",
            [],
            rank_free,
        )
        plain = helper.make_graph(
            [helper.make_node("Identity", [z], ["swiglu_y"], name="Identity_z")], f"{self.op}_linear", [], rank_free
        )
        node("If", ["swiglu_on"], [out], then_branch=gated, else_branch=plain)

    def values(self, levels: bool, out: str) -> None:
        """``out`` = float [R, G, 64] weights at ``bits``: floor, or the rule of table ``L``."""
        node = self.node
        if not levels:
            node("Cast", ["qk"], ["qkf"], to=TensorProto.FLOAT)
            node("Mul", ["qkf", "signed_scale"], [out])
            return
        # the levels row of E5Mk and whether it is j * 2^(8-k) + c (then value = q_k + c, no lookup);
        # k from the checked row, so an invalid bits fails at the named check, nowhere else
        self.const("zero_f", np.array(0.0, np.float32))
        node("Gather", ["L", "row"], ["lrow"], axis=0)  # [256]
        node("Add", ["row", "bits_lo"], ["k"])
        node("Sub", ["mant", "k"], ["drop64"])  # 8 - k
        node("Cast", ["drop64"], ["drop_f"], to=TensorProto.FLOAT)
        node("Pow", ["two", "drop_f"], ["step"])  # 2^(8-k)
        node("Cast", ["k"], ["k_f"], to=TensorProto.FLOAT)
        node("Pow", ["two", "k_f"], ["count_f"])
        node("Cast", ["count_f"], ["count"], to=TensorProto.INT64)
        node("Unsqueeze", ["count", "i0"], ["count1"])
        node("Slice", ["lrow", "i0", "count1"], ["used"])  # the 2^k levels of E5Mk
        node("Range", ["zero_f", "count_f", "one"], ["j"])
        node("Gather", ["lrow", "i0"], ["c1"], axis=0)
        node("Squeeze", ["c1"], ["c"])
        node("Mul", ["j", "step"], ["jstep"])
        node("Add", ["jstep", "c"], ["affine"])
        node("Sub", ["used", "affine"], ["dev"])
        node("Abs", ["dev"], ["adev"])
        node("ReduceMax", ["adev"], ["maxdev"], keepdims=0)
        node("Equal", ["maxdev", "zero_f"], ["is_affine"])
        then_branch = helper.make_graph(
            [
                helper.make_node("Cast", ["qk"], ["qkf"], name="Cast_qkf", to=TensorProto.FLOAT),
                helper.make_node("Add", ["qkf", "c"], ["qc"], name="Add_qc"),
                helper.make_node("Mul", ["qc", "signed_scale"], ["w_affine"], name="Mul_w_affine"),
            ],
            f"{self.op}_affine_row",
            [],
            [helper.make_tensor_value_info("w_affine", TensorProto.FLOAT, [None, None, None])],
        )
        else_branch = helper.make_graph(
            [
                helper.make_node("Cast", ["drop64"], ["drop_u8"], name="Cast_drop_u8", to=TensorProto.UINT8),
                helper.make_node("BitShift", ["qk", "drop_u8"], ["level_u8"], name="Shift_level", direction="RIGHT"),
                helper.make_node("Cast", ["level_u8"], ["level"], name="Cast_level", to=TensorProto.INT64),
                helper.make_node("Gather", ["lrow", "level"], ["lv"], name="Gather_levels", axis=0),
                helper.make_node("Mul", ["lv", "signed_scale"], ["w_table"], name="Mul_w_table"),
            ],
            f"{self.op}_table_row",
            [],
            [helper.make_tensor_value_info("w_table", TensorProto.FLOAT, [None, None, None])],
        )
        node("If", ["is_affine"], [out], then_branch=then_branch, else_branch=else_branch)


def _int8_branch(x: str, k: str, op: str) -> onnx.GraphProto:
    """fq(x) of docs/FORMAT.md §9 for ``x`` [M, K] (float ops; outer names: ``G``, ``i0``/``i1``/``i64``/``im1``)."""
    f32 = np.float32
    consts = {"a8_q_max": np.array(127.0, f32), "a8_q_min": np.array(-127.0, f32), "a8_f_zero": np.array(0.0, f32),
              "a8_f_one": np.array(1.0, f32), "a8_axis_last": np.array([-1], np.int64)}  # fmt: skip
    nodes = [
        helper.make_node("Constant", [], [n], name=f"const_{n}", value=numpy_helper.from_array(v, n))
        for n, v in consts.items()
    ]

    def add(op_type, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{outputs[0]}", **attrs))

    # zero-pad K to the groups (G * 64), then blocks [M, G, 64]
    add("Mul", ["G", "i64"], ["a8_k_pad"])
    add("Sub", ["a8_k_pad", k], ["a8_pad_k"])
    add("Concat", ["i0", "i0", "i0", "a8_pad_k"], ["a8_pads"], axis=0)
    add("Pad", [x, "a8_pads"], ["a8_x_pad"])
    add("Concat", ["im1", "G", "i64"], ["a8_block_shape"], axis=0)
    add("Reshape", ["a8_x_pad", "a8_block_shape"], ["a8_blocks"])
    add("Abs", ["a8_blocks"], ["a8_abs_b"])
    add("ReduceMax", ["a8_abs_b", "a8_axis_last"], ["a8_amax"], keepdims=1)
    # a block holding Inf / NaN, or all zeros, is kept as it is
    add("IsInf", ["a8_blocks"], ["a8_is_inf"])
    add("IsNaN", ["a8_blocks"], ["a8_is_nan"])
    add("Or", ["a8_is_inf", "a8_is_nan"], ["a8_bad"])
    add("Cast", ["a8_bad"], ["a8_bad_f"], to=TensorProto.FLOAT)
    add("ReduceMax", ["a8_bad_f", "a8_axis_last"], ["a8_bad_block"], keepdims=1)
    add("Greater", ["a8_bad_block", "a8_f_zero"], ["a8_non_finite"])
    add("Equal", ["a8_amax", "a8_f_zero"], ["a8_all_zero"])
    add("Or", ["a8_non_finite", "a8_all_zero"], ["a8_keep"])
    add("Where", ["a8_keep", "a8_f_one", "a8_amax"], ["a8_safe"])
    add("Div", ["a8_q_max", "a8_safe"], ["a8_inv"])
    add("Mul", ["a8_blocks", "a8_inv"], ["a8_scaled"])
    add("Round", ["a8_scaled"], ["a8_rounded"])  # half to even
    add("Clip", ["a8_rounded", "a8_q_min", "a8_q_max"], ["a8_q"])
    add("Div", ["a8_safe", "a8_q_max"], ["a8_step"])
    add("Mul", ["a8_q", "a8_step"], ["a8_deq"])
    add("Where", ["a8_keep", "a8_blocks", "a8_deq"], ["a8_fq_blocks"])
    add("Concat", ["im1", "a8_k_pad"], ["a8_flat_shape"], axis=0)
    add("Reshape", ["a8_fq_blocks", "a8_flat_shape"], ["a8_fq_pad"])
    add("Slice", ["a8_fq_pad", "i0", k, "i1"], ["a8_x_fq"])
    return helper.make_graph(
        nodes, f"{op}_int8_activations", [], [helper.make_tensor_value_info("a8_x_fq", TensorProto.FLOAT, [None, None])]
    )


def _opsets(opset: int) -> list:
    if opset < 18:
        raise ValueError(f"the SEFP function bodies need ONNX opset >= 18 (BitwiseAnd), got {opset}")
    return [helper.make_opsetid("", opset)]


def function_proto(opset: int, levels: bool = False) -> onnx.FunctionProto:
    """The standard-ops body of ``ai.otaro::SEFPLinear``; ``opset`` must equal the model's ONNX opset.

    ``levels``: the body of nodes that pass ``L`` (overload ``"levels"``).
    """
    opsets = _opsets(opset)
    b = _Body(OP_TYPE)
    b.constants()
    b.unpack(["P0", "P1", "P2", "P3"], "E")  # bits-independent: folded by onnxruntime at session creation
    # -- per call: range check, one mask, the values, one Gemm --
    b.masked(RANGE_CHECK_NODE)
    b.values(levels, "wg")
    node = b.node
    node("Concat", ["R", "im1"], ["shapeNK"], axis=0)
    node("Reshape", ["wg", "shapeNK"], ["w_pad"])
    node("Shape", ["X"], ["K"], start=-1)
    node("Slice", ["w_pad", "i0", "K", "i1"], ["W"])  # drop the zero padding of the last group
    node("Concat", ["im1", "K"], ["shapeMK"], axis=0)
    node("Reshape", ["X", "shapeMK"], ["X2"])
    b.int8_activations("X2", "K", "X2q")
    node("Gemm", ["X2q", "W", "B"], ["Y2"], transB=1)
    node("Shape", ["X"], ["lead"], end=-1)
    node("Concat", ["lead", "R"], ["shapeY"], axis=0)
    node("Reshape", ["Y2", "shapeY"], ["Z"])
    b.swiglu("Z", "Y")
    inputs = INPUTS if levels else INPUTS[:-1]
    fn = helper.make_function(
        DOMAIN,
        OP_TYPE,
        inputs,
        ["Y"],
        b.nodes,
        opset_imports=opsets,
        attribute_protos=[helper.make_attribute(INT8_ATTRIBUTE, 0), helper.make_attribute(SWIGLU_ATTRIBUTE, 0)],
    )
    if levels:
        fn.overload = LEVELS_OVERLOAD
    return fn


def embedding_function_proto(opset: int, levels: bool = False) -> onnx.FunctionProto:
    """The standard-ops body of ``ai.otaro::SEFPEmbedding`` (attribute ``in_features``)."""
    opsets = _opsets(opset)
    b = _Body(EMBEDDING_OP_TYPE)
    b.constants()
    node = b.node
    # ids in [0, N): reshaped to [numel * valid] (allowzero), which fails for a bad id
    b.const("zero_i", np.array(0, np.int64))
    node("Shape", ["E"], ["N"], start=0, end=1)
    node("Reshape", ["ids", "im1"], ["flat"])
    node("ReduceMin", ["flat"], ["id_min"], keepdims=0)
    node("ReduceMax", ["flat"], ["id_max"], keepdims=0)
    node("Squeeze", ["N"], ["n0"])
    node("GreaterOrEqual", ["id_min", "zero_i"], ["ids_ge"])
    node("Less", ["id_max", "n0"], ["ids_lt"])
    node("And", ["ids_ge", "ids_lt"], ["ids_ok"])
    node("Cast", ["ids_ok"], ["ids_ok64"], to=TensorProto.INT64)
    node("Shape", ["flat"], ["numel"])
    node("Mul", ["numel", "ids_ok64"], ["checked_shape"])
    node("Reshape", ["flat", "checked_shape"], ["flat_ok"], name=IDS_CHECK_NODE, allowzero=1)
    rows = []
    for plane in ("P0", "P1", "P2", "P3", "E"):
        node("Gather", [plane, "flat_ok"], [f"{plane}_rows"], axis=0)
        rows.append(f"{plane}_rows")
    b.unpack(rows[:4], rows[4])  # only the gathered rows
    b.masked(EMBEDDING_RANGE_CHECK_NODE)
    b.values(levels, "wg")
    b.attribute_const("k_scalar", "in_features")
    node("Unsqueeze", ["k_scalar", "i0"], ["K"])
    node("Concat", ["R", "im1"], ["shapeTK"], axis=0)
    node("Reshape", ["wg", "shapeTK"], ["w_pad"])
    node("Slice", ["w_pad", "i0", "K", "i1"], ["rows_k"])  # drop the zero padding of the last group
    node("Shape", ["ids"], ["ids_shape"])
    node("Concat", ["ids_shape", "K"], ["shapeY"], axis=0)
    node("Reshape", ["rows_k", "shapeY"], ["Y"])
    inputs = EMBEDDING_INPUTS if levels else EMBEDDING_INPUTS[:-1]
    fn = helper.make_function(
        DOMAIN, EMBEDDING_OP_TYPE, inputs, ["Y"], b.nodes, opset_imports=opsets, attributes=["in_features"]
    )
    if levels:
        fn.overload = LEVELS_OVERLOAD
    return fn


def _passes_levels(node: onnx.NodeProto) -> bool:
    position = {OP_TYPE: len(INPUTS) - 1, EMBEDDING_OP_TYPE: len(EMBEDDING_INPUTS) - 1}[node.op_type]
    return len(node.input) > position and node.input[position] != ""


def _sefp_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type in (OP_TYPE, EMBEDDING_OP_TYPE):
            yield node
        for attr in node.attribute:  # nodes inside If / Loop bodies
            for sub in [attr.g, *attr.graphs] if attr.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) else []:
                yield from _sefp_nodes(sub)


def set_int_attribute(node: onnx.NodeProto, name: str, value: int | None) -> None:
    """Replace ``node``'s attribute ``name`` by the int ``value`` (``None``: remove it)."""
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept)
    if value is not None:
        node.attribute.append(helper.make_attribute(name, value))


def set_int8_activations(model: onnx.ModelProto, max_bits: int) -> int:
    """Give every ``SEFPLinear`` node ``act_int8_max_bits = max_bits`` (0 removes it); returns the node count."""
    from otaro_export.activation_quant import check_max_bits

    check_max_bits(max_bits)
    count = 0
    for node in _sefp_nodes(model.graph):
        if node.op_type != OP_TYPE:
            continue
        set_int_attribute(node, INT8_ATTRIBUTE, max_bits or None)
        count += 1
    return count


def attach_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add the function bodies the model's SEFP nodes need (matching its opset), and the domain import.

    Nodes that pass ``L`` get the overload ``"levels"`` (the model's IR version is
    raised to 10, the first with function overloads, if it is older). A model
    with no SEFP node still gets the ``SEFPLinear`` body (as before).
    """
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ValueError("model has no default-domain opset import")
    wanted = set()
    for node in _sefp_nodes(model.graph):
        with_levels = _passes_levels(node)
        node.overload = LEVELS_OVERLOAD if with_levels else ""
        wanted.add((node.op_type, with_levels))
    if not wanted:
        wanted.add((OP_TYPE, False))
    if any(with_levels for _, with_levels in wanted):
        model.ir_version = max(model.ir_version, _OVERLOAD_IR_VERSION)
    builders = {OP_TYPE: function_proto, EMBEDDING_OP_TYPE: embedding_function_proto}
    kept = [f for f in model.functions if not (f.domain == DOMAIN and f.name in builders)]
    del model.functions[:]
    model.functions.extend(kept)
    for op_type, with_levels in sorted(wanted):
        model.functions.append(builders[op_type](opset, with_levels))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, OP_VERSION))
    return model
