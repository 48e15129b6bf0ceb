"""ONNX graph pass: fold the SwiGLU after a packed ``[gate | up]`` SEFPLinear into the node.

The decoder's MLP exports as ``Z = SEFPLinear(x, ...)`` followed by the standard-op
SwiGLU of :func:`otaro_export.export.contrib_ops.translation_table`::

    gate, up = Split(Z, axis=-1, num_outputs=2)
    Y = Mul(Mul(gate, Sigmoid(gate)), up)

This pass replaces those four nodes by the attribute ``swiglu = 1`` on the SEFPLinear
node, which then outputs ``Y`` itself (docs/FORMAT.md §5): the library's kernel
combines each feature range of both halves while it is in cache, and the function
body (stock onnxruntime) computes the same four ops. In a decode step the four nodes
cost more in onnxruntime's per-node overhead than their arithmetic on 1536 floats.

Only exact matches are rewritten: every intermediate tensor has exactly the consumers of
the pattern and is not a graph output, so nothing else reads a value that disappears.
"""

from __future__ import annotations

import onnx
from onnx import helper

from otaro_export.export.onnx_sefp_function import DOMAIN, OP_TYPE, SWIGLU_ATTRIBUTE, set_int_attribute


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is_halving_split(node: onnx.NodeProto) -> bool:
    """``Split`` of the last axis into two equal outputs (no explicit ``split`` sizes)."""
    return (
        node.op_type == "Split"
        and node.domain in ("", "ai.onnx")
        and len(node.input) == 1
        and len(node.output) == 2
        and _attr(node, "axis", 0) == -1
        and _attr(node, "num_outputs") == 2
    )


def fuse_swiglu(model: onnx.ModelProto) -> int:
    """Rewrite every ``SEFPLinear -> Split -> Sigmoid / Mul / Mul`` SwiGLU in ``model``'s main graph; returns the count."""
    graph = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}

    def only(name: str) -> list[onnx.NodeProto]:
        return [] if name in outputs else consumers.get(name, [])

    removed: set[int] = set()
    fused = 0
    for linear in graph.node:
        if linear.domain != DOMAIN or linear.op_type != OP_TYPE or _attr(linear, SWIGLU_ATTRIBUTE, 0):
            continue
        users = only(linear.output[0])
        if len(users) != 1 or not _is_halving_split(users[0]):
            continue
        split = users[0]
        gate, up = split.output
        gate_users, up_users = only(gate), only(up)
        sigmoid = next((n for n in gate_users if n.op_type == "Sigmoid" and list(n.input) == [gate]), None)
        if sigmoid is None or len(gate_users) != 2 or len(up_users) != 1:
            continue
        sig_users = only(sigmoid.output[0])
        silu = gate_users[0] if gate_users[1] is sigmoid else gate_users[1]
        if silu.op_type != "Mul" or sorted(silu.input) != sorted([gate, sigmoid.output[0]]) or sig_users != [silu]:
            continue
        (product,) = up_users
        silu_users = only(silu.output[0])
        if product.op_type != "Mul" or sorted(product.input) != sorted([silu.output[0], up]) or silu_users != [product]:
            continue
        linear.output[0] = product.output[0]
        set_int_attribute(linear, SWIGLU_ATTRIBUTE, 1)  # the exporter wrote the default 0
        removed.update(id(n) for n in (split, sigmoid, silu, product))
        fused += 1
    if fused:
        kept = [n for n in graph.node if id(n) not in removed]
        del graph.node[:]
        graph.node.extend(kept)
        live = {name for n in graph.node for name in n.output}
        live.update(i.name for i in graph.input)
        live.update(t.name for t in graph.initializer)
        kept_info = [v for v in graph.value_info if v.name in live]
        del graph.value_info[:]
        graph.value_info.extend(kept_info)
    return fused
