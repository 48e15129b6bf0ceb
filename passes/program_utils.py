"""Small, careful edits of a ``torch.export.ExportedProgram`` shared by the passes (not a pass).

An ExportedProgram keeps three things in lock-step: the graph's placeholder
nodes, ``graph_signature.input_specs`` (one spec per placeholder, same order)
and the tensors behind the lifted inputs (``state_dict`` for parameters and
persistent buffers, ``constants`` for lifted constants and non-persistent
buffers). Every helper here keeps them consistent, the way ExecuTorch's
``constant_prop_pass`` / ``create_constant_placeholder`` do: new constants are
``InputKind.CONSTANT_TENSOR`` placeholders inserted before the first user input,
with a fake-tensor ``meta["val"]`` from the program's own fake mode.
"""

from __future__ import annotations

import re

import torch
from torch._guards import detect_fake_mode
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, InputSpec, TensorArgument

#: input kinds whose tensor lives in the program (not passed by the caller)
LIFTED_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)


def placeholders(ep: ExportedProgram) -> list[torch.fx.Node]:
    return list(ep.graph.find_nodes(op="placeholder"))


def input_spec(ep: ExportedProgram, node: torch.fx.Node) -> InputSpec | None:
    for spec in ep.graph_signature.input_specs:
        if isinstance(spec.arg, TensorArgument) and spec.arg.name == node.name:
            return spec
    return None


def lifted_tensor(ep: ExportedProgram, spec: InputSpec) -> torch.Tensor:
    """The tensor behind a parameter / buffer / lifted-constant input."""
    if spec.kind not in LIFTED_KINDS:
        raise ValueError(f"input {spec.arg.name} is a {spec.kind.name}, not a lifted tensor")
    if spec.target in ep.state_dict:
        return ep.state_dict[spec.target]
    if spec.target in ep.constants:
        return ep.constants[spec.target]
    raise KeyError(f"exported program has no tensor for {spec.target!r} (input {spec.arg.name})")


def lifted_inputs(ep: ExportedProgram) -> dict[str, tuple[torch.fx.Node, InputSpec]]:
    """``target FQN -> (placeholder, spec)`` for every parameter, buffer and lifted constant."""
    by_name = {n.name: n for n in placeholders(ep)}
    out = {}
    for spec in ep.graph_signature.input_specs:
        if spec.kind in LIFTED_KINDS and spec.target is not None:
            out[spec.target] = (by_name[spec.arg.name], spec)
    return out


def user_input_nodes(ep: ExportedProgram) -> list[torch.fx.Node]:
    user = set(ep.graph_signature.user_inputs)
    return [n for n in placeholders(ep) if n.name in user]


def fake_mode(ep: ExportedProgram):
    mode = detect_fake_mode(tuple(n.meta["val"] for n in placeholders(ep) if "val" in n.meta))
    if mode is None:
        raise RuntimeError("exported program has no fake tensor metadata on its inputs")
    return mode


def _node_name(stem: str) -> str:
    return re.sub(r"[^0-9a-zA-Z_]", "_", stem)


def add_constant(ep: ExportedProgram, target: str, value: torch.Tensor) -> torch.fx.Node:
    """Add ``value`` as a lifted constant input (``ep.constants[target]``); return its placeholder."""
    return add_constants(ep, {target: value})[target]


def add_constants(ep: ExportedProgram, values: dict[str, torch.Tensor]) -> dict[str, torch.fx.Node]:
    """Add several lifted constants at once (one signature rebuild); returns ``requested target -> node``.

    A target already taken gets a numeric suffix rather than overwriting another tensor.
    """
    if not values:
        return {}
    mode = fake_mode(ep)
    user = user_input_nodes(ep)
    graph = ep.graph
    if user:
        ctx = graph.inserting_before(user[0])
    else:  # no user inputs: append after the last placeholder
        existing = placeholders(ep)
        ctx = graph.inserting_after(existing[-1]) if existing else graph.inserting_before(None)
    taken = set(ep.state_dict) | set(ep.constants)
    nodes, specs = {}, {}
    with ctx:
        for requested, value in values.items():
            target, i = requested, 1
            while target in taken:
                target, i = f"{requested}_{i}", i + 1
            taken.add(target)
            node = graph.placeholder(_node_name(f"c_{target}"))
            node.meta["val"] = mode.from_tensor(value, static_shapes=True)
            ep.constants[target] = value
            specs[node.name] = InputSpec(InputKind.CONSTANT_TENSOR, TensorArgument(node.name), target, None)
            nodes[requested] = node
    resync_input_specs(ep, specs)
    return nodes


def remove_placeholder(ep: ExportedProgram, node: torch.fx.Node) -> str | None:
    """Erase an unused lifted input and drop its tensor unless another input still names it."""
    return remove_placeholders(ep, [node])[0]


def remove_placeholders(ep: ExportedProgram, nodes: list[torch.fx.Node]) -> list[str]:
    """Erase unused lifted inputs (one signature rebuild); returns their targets."""
    specs = []
    for node in nodes:
        if node.users:
            raise RuntimeError(f"cannot remove input {node.name}: still used by {list(node.users)}")
        spec = input_spec(ep, node)
        if spec is None or spec.kind not in LIFTED_KINDS:
            raise RuntimeError(f"cannot remove input {node.name}: not a parameter, buffer or lifted constant")
        specs.append(spec)
    for node in nodes:
        ep.graph.erase_node(node)
    resync_input_specs(ep, {})
    still_named = {s.target for s in ep.graph_signature.input_specs}
    for spec in specs:
        if spec.target not in still_named:
            ep.state_dict.pop(spec.target, None)
            ep.constants.pop(spec.target, None)
    return [spec.target for spec in specs]


def resync_input_specs(ep: ExportedProgram, new_specs: dict[str, InputSpec]) -> None:
    """Rebuild ``input_specs`` in placeholder order (existing specs + ``new_specs``)."""
    by_name = {s.arg.name: s for s in ep.graph_signature.input_specs if hasattr(s.arg, "name")}
    by_name.update(new_specs)
    specs = []
    for node in placeholders(ep):
        if node.name not in by_name:
            raise RuntimeError(f"placeholder {node.name} has no input spec")
        specs.append(by_name[node.name])
    ep.graph_signature.input_specs = specs


def replace_node(ep: ExportedProgram, old: torch.fx.Node, new: torch.fx.Node) -> None:
    """Point every use of ``old`` at ``new``, including output specs that name ``old``, then erase it."""
    old.replace_all_uses_with(new)
    for spec in ep.graph_signature.output_specs:
        if isinstance(spec.arg, TensorArgument) and spec.arg.name == old.name:
            spec.arg = TensorArgument(name=new.name)
    for entry in ep.module_call_graph:
        if entry.signature is not None:
            entry.signature.replace_all_uses_with(old, new)
    ep.graph.erase_node(old)


def finish(ep: ExportedProgram) -> ExportedProgram:
    """Recompile the graph module after edits and check the program is still well formed."""
    ep.graph.lint()
    ep.graph_module.recompile()
    ep.validate()
    return ep
