"""Merge duplicate computations that depend only on constants and non-mutated inputs.

``decompose_sefp_linear`` and ``decompose_sefp_embedding`` expand every SEFP op
on its own, so each of a model's ~120 linears carries its own copy of the same
small subgraphs of ``bits`` and literals (the precision mask, the floor rule's
signed level table, the field divisors, ``bits <= act_int8_max_bits``). Every
later stage of the ExecuTorch lowering (decompositions, edge passes,
partitioning, emission) costs time per node, and the runtime executes each copy
on every call; one copy of each is enough.

A node is merged into an earlier one with the same target, arguments and keyword
arguments only when it is *stable*: a pure ATen op (no mutable schema, not
random) with a tensor result, whose inputs are literals, placeholders the
program never mutates (parameters, constants, buffers other than the KV caches,
user inputs) or other stable nodes, so both compute the same value. Nodes that
read mutated state, symbolic sizes and the program's outputs (their names are
in the graph signature) are never merged. Arguments compare with their types
(``x * 2`` and ``x * 2.0`` differ for an integer ``x``).
"""

from __future__ import annotations

import torch
from torch.export import ExportedProgram
from torch.fx import Node

__all__ = ["merge_duplicate_nodes"]


def _stable_placeholders(ep: ExportedProgram) -> set[str]:
    sig = ep.graph_signature
    mutated = set(sig.buffers_to_mutate.values()) | set(getattr(sig, "user_inputs_to_mutate", {}).values())
    names = set()
    for spec in sig.input_specs:
        target = spec.target if spec.target is not None else spec.arg.name
        if target in mutated or spec.arg.name in mutated:
            continue
        names.add(spec.arg.name)
    return names


def _is_pure(node: Node) -> bool:
    target = node.target
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if target._schema.is_mutable or torch.Tag.nondeterministic_seeded in target.tags:
        return False
    return True


def _key(value, stable: set[Node]):
    """A hashable form of an argument, or None if it reads a node that is not stable."""
    if isinstance(value, Node):
        return ("node", value) if value in stable else None
    if isinstance(value, (list, tuple)):
        items = tuple(_key(v, stable) for v in value)
        return None if any(i is None for i in items) else (type(value).__name__, items)
    if isinstance(value, dict):
        items = tuple((k, _key(v, stable)) for k, v in sorted(value.items()))
        return None if any(i[1] is None for i in items) else ("dict", items)
    if isinstance(value, (bool, int, float, str, type(None), torch.dtype, torch.device, torch.layout)):
        # type first: 1, 1.0 and True compare equal but are different arguments
        return (type(value).__name__, value)
    if isinstance(value, torch.memory_format):
        return ("memory_format", str(value))
    return None  # anything else (SymInts, tensors): never merged


def merge_duplicate_nodes(ep: ExportedProgram) -> tuple[ExportedProgram, int]:
    """Merge identical stable nodes in place; returns ``(ep, number of nodes removed)``."""
    graph = ep.graph
    placeholders = _stable_placeholders(ep)
    output = graph.output_node()
    stable: set[Node] = set()
    seen: dict = {}
    merged = 0
    for node in list(graph.nodes):
        if node.op == "placeholder":
            if node.name in placeholders:
                stable.add(node)
            continue
        if node.op != "call_function" or not _is_pure(node):
            continue
        if not isinstance(node.meta.get("val"), torch.Tensor):  # symbolic sizes and multi-output ops stay
            continue
        key = _key((node.args, node.kwargs), stable)
        if key is None:
            continue
        key = (node.target, key)
        first = seen.get(key)
        if first is not None and output not in node.users:
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            merged += 1
            continue
        seen.setdefault(key, node)
        stable.add(node)
    if merged:
        ep.graph_module.recompile()
    return ep, merged
