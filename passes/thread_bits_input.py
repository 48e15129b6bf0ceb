"""Pass: make ONE model-level ``bits`` user input (0-dim int64) feed every SEFP node.

Whatever each ``otaro.sefp_linear`` node used as its precision before (the
lowering pass's shared E5M8 constant, or per-layer ``bits`` buffers of
``SEFPLinear`` modules exported as-is) is replaced by the user input named
``bits_input``. If the program has no such input, one is appended to its
signature (positional, or a keyword if the program already takes keywords)
so ``ep.module()(..., bits)`` works.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

from otaro_export import ops
from otaro_export.passes import program_utils as pu

log = logging.getLogger(__name__)

SEFP_TARGETS = (torch.ops.otaro.sefp_linear.default, torch.ops.otaro.sefp_embedding.default)
BITS_ARG_INDEX = 6  # (x | ids), p0, p1, p2, p3, exponents, bits, ...: the same slot in both ops


@dataclass
class ThreadResult:
    bits_node: torch.fx.Node
    added_input: bool
    count: int  # SEFP nodes now reading the model-level input


def _check_bits_node(node: torch.fx.Node) -> None:
    val = node.meta.get("val")
    if val is not None and (val.dtype != torch.int64 or val.dim() != 0):
        raise TypeError(f"user input {node.name!r} must be a 0-dim int64 tensor, got {val.dtype} {list(val.shape)}")


def _append_user_input(ep: ExportedProgram, name: str) -> torch.fx.Node:
    last = pu.placeholders(ep)[-1]
    with ep.graph.inserting_after(last):
        node = ep.graph.placeholder(name)
    node.meta["val"] = pu.fake_mode(ep).from_tensor(ops.bits_tensor(8), static_shapes=True)
    pu.resync_input_specs(ep, {node.name: InputSpec(InputKind.USER_INPUT, TensorArgument(node.name), None, None)})
    # The call signature (pytree in_spec) must grow too, or ep.module() rejects the new argument.
    entry = ep.module_call_graph[0]
    signature = entry.signature
    if signature is not None:
        marker = torch.empty(())  # a tensor leaf; only the tree structure matters here
        args, kwargs = pytree.tree_unflatten([marker] * signature.in_spec.num_leaves, signature.in_spec)
        if kwargs:
            kwargs = {**kwargs, name: marker}
        else:
            args = (*args, marker)
        signature.in_spec = pytree.tree_structure((args, kwargs))
        signature.inputs.append(TensorArgument(node.name))
        if signature.forward_arg_names is not None:
            signature.forward_arg_names.append(name)
    if ep.example_inputs is not None:
        args, kwargs = ep.example_inputs
        if kwargs:
            ep._example_inputs = (args, {**kwargs, name: ops.bits_tensor(8)})
        else:
            ep._example_inputs = ((*args, ops.bits_tensor(8)), kwargs)
    return node


def thread_bits_input(ep: ExportedProgram, bits_input: str = "bits") -> tuple[ExportedProgram, ThreadResult]:
    """Point the ``bits`` argument of every SEFP node at the user input ``bits_input`` (in place)."""
    node = next((n for n in pu.user_input_nodes(ep) if n.name == bits_input), None)
    added = node is None
    if added:
        node = _append_user_input(ep, bits_input)
    _check_bits_node(node)
    count = 0
    for sefp in ep.graph.nodes:
        if sefp.op == "call_function" and sefp.target in SEFP_TARGETS:
            if sefp.args[BITS_ARG_INDEX] is not node:
                sefp.update_arg(BITS_ARG_INDEX, node)
            count += 1
    if count == 0:
        log.warning("thread_bits_input: the program has no otaro.sefp_linear node; nothing to thread")
    pu.finish(ep)
    log.info("thread_bits_input: %d SEFP nodes read user input %r%s", count, bits_input, " (added)" if added else "")
    return ep, ThreadResult(node, added, count)
