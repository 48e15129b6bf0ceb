"""Write a demo bundle for the Android and iOS example apps (examples/android, examples/ios).

``otaro demo ARTIFACT --write-mobile-bundle DIR`` copies the ONNX artifact into
DIR and writes ``demo_bundle.json`` next to it: the task script already
tokenized (prompt and option ids), the policy's precision per task, the
graph's I/O names (docs/FORMAT.md §8) with each KV cache's past/present pair
and shape, and per-token bytes for detokenizing. The apps then need only
onnxruntime's mobile API and a JSON parser: no tokenizer library, no Python.

Bundle format (``format_version`` 2)::

    {"format": "otaro-demo-bundle", "format_version": 2,
     "model_files": ["model.onnx", "model.onnx.data"], "model_file": "model.onnx",
     "onnxruntime_version": "1.32.0", "onnx_ir_version": 10, "onnx_opset": 18,
     "kernels": "fused", "kernel_library": "onnxruntime",
     "precisions": [3, ...], "max_seq_len": 256, "vocab_size": 259, "eos_token_ids": [256],
     "io": {"input_ids": "input_ids", "bits": "bits", "seqlens_k": "seqlens_k",
            "total_sequence_length": "total_sequence_length", "logits_positions": "logits_positions",
            "logits": "logits",
            "cache": [{"input": "past_key_0", "output": "present_key_0", "shape": [1, 2, 256, 16]}, ...]},
     "tasks": [{"name", "kind": "choose"|"generate", "bits", "prompt", "prompt_ids",
                "options": [{"text", "ids"}] | "max_new_tokens"}],
     (a choice's prompt_ids end with its answer prefix's tokens; score each option's ids after them)
     "token_bytes": ["<base64>", ...]}

A step of S new tokens after ``total - S`` cached ones feeds ``seqlens_k = [total - 1]`` (int32),
``total_sequence_length = total`` (int32, 0-dim) and ``logits_positions`` (int64, the indices among the
S whose logits are wanted), and each cache's ONE buffer of ``shape`` as both its past input and its
present output: onnxruntime's GroupQueryAttention writes the S new positions in place. Version 1
(growing caches fed back from the outputs, position ids) described the previous exporter graph.

``examples/mobile/bundle_runner.py`` runs a bundle with onnxruntime's Python API
exactly as the apps do (same steps, same I/O); the test suite checks it
against ``otaro_export.runtime``.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from otaro_export.demo.harness import check_fits, choice_ids
from otaro_export.demo.policy import Policy
from otaro_export.demo.tasks import Task
from otaro_export.demo.token_bytes import token_bytes_table
from otaro_export.demo.toml_io import DemoConfigError

BUNDLE_NAME = "demo_bundle.json"
FORMAT_VERSION = 2
#: the decoder graph's inputs besides the caches, with their onnxruntime types (docs/FORMAT.md §8)
STEP_INPUTS = {
    "input_ids": "tensor(int64)",
    "bits": "tensor(int64)",
    "seqlens_k": "tensor(int32)",
    "total_sequence_length": "tensor(int32)",
    "logits_positions": "tensor(int64)",
}


def _graph_error(what: str) -> DemoConfigError:
    return DemoConfigError(
        f"this ONNX model is not the decoder graph the apps run (docs/FORMAT.md §8): {what}; "
        "re-export it with this otaro-export"
    )


def describe_io(session, manifest) -> dict:
    """The bundle's ``io`` entry: the graph's step inputs and each cache's past/present pair and shape.

    ``session`` is an onnxruntime session (anything with ``get_inputs()`` / ``get_outputs()``).
    """
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    for name, dtype in STEP_INPUTS.items():
        if name not in inputs:
            raise _graph_error(f"it has no input {name!r} (inputs: {sorted(inputs)})")
        if inputs[name].type != dtype:
            raise _graph_error(f"input {name!r} is {inputs[name].type}, not {dtype}")
    if "logits" not in outputs:
        raise _graph_error(f"it has no output 'logits' (outputs: {outputs})")
    # present_key_i is written in place into past_key_i's buffer: pair them by name, not position
    presents = [n for n in outputs if n != "logits"]
    pasts = [n for n in inputs if n not in STEP_INPUTS]
    paired = {p.replace("present_", "past_", 1): p for p in presents if p.startswith("present_")}
    if len(paired) != len(presents) or set(paired) != set(pasts):
        raise DemoConfigError(
            f"cannot pair KV-cache inputs {pasts} with outputs {presents}: each past_X needs its present_X"
        )
    model = manifest.model
    shape = [1, int(model["num_kv_heads"]), int(model["max_seq_len"]), int(model["head_dim"])]
    cache = []
    for name in pasts:  # graph order
        graph_shape = list(inputs[name].shape)
        if len(graph_shape) != 4 or any(isinstance(g, int) and g != s for g, s in zip(graph_shape, shape)):
            raise _graph_error(f"cache input {name!r} has shape {graph_shape}, the manifest says {shape}")
        cache.append({"input": name, "output": paired[name], "shape": shape})
    return {**{name: name for name in STEP_INPUTS}, "logits": "logits", "cache": cache}


def _task_entry(session, task: Task, bits: int) -> dict:
    entry = {"name": task.name, "kind": task.kind, "bits": bits, "prompt": task.prompt}
    if task.kind == "choose":
        # prompt_ids of a choice end with its answer prefix: the app scores exactly what score_options does
        entry["prompt_ids"], options = choice_ids(session, task)
        entry["options"] = [{"text": o, "ids": ids} for o, ids in zip(task.options, options)]
    else:
        entry["prompt_ids"] = session.encode_prompt(task.prompt, chat=True)
        entry["max_new_tokens"] = task.max_new_tokens
    return entry


def write_mobile_bundle(session, policy: Policy, tasks: list[Task], out_dir: str | Path) -> Path:
    """Copy ``session``'s ONNX artifact into ``out_dir`` and write the bundle JSON; returns its path."""
    import onnx
    import onnxruntime as ort

    manifest = session.manifest
    if manifest.target != "onnx":
        raise DemoConfigError(
            f"mobile bundles are built from ONNX artifacts (the apps use onnxruntime-mobile); this one is {manifest.target!r}"
        )
    if session.tokenizer is None:
        raise DemoConfigError("the export has no tokenizer; the bundle needs it to encode the tasks")
    plan = policy.plan(tasks)
    check_fits(session, tasks)  # a task that overflows the KV cache fails here, not on the phone
    src = session.directory
    # Stock onnxruntime, no custom-op library: what the apps run (the SEFP ops fall back to their function bodies).
    io = describe_io(ort.InferenceSession(str(src / manifest.artifact), providers=["CPUExecutionProvider"]), manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_files = [manifest.artifact] + sorted(
        p.name
        for p in src.iterdir()
        if p.is_file() and p.name.startswith(manifest.artifact) and p.name != manifest.artifact
    )  # external-data files are named after the model ("model.onnx.data")
    for name in model_files:
        shutil.copyfile(src / name, out / name)
    proto = onnx.load(str(src / manifest.artifact), load_external_data=False)
    bundle = {
        "format": "otaro-demo-bundle",
        "format_version": FORMAT_VERSION,
        "model_file": manifest.artifact,
        "model_files": model_files,
        "onnxruntime_version": ort.__version__,
        "onnx_ir_version": proto.ir_version,
        "onnx_opset": next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        "kernels": manifest.kernels,
        "kernel_library": manifest.kernel_library,
        "precisions": session.precisions,
        "max_seq_len": session.max_seq_len,
        "vocab_size": manifest.model.get("vocab_size"),
        "eos_token_ids": sorted(session.eos_token_ids()),
        "io": io,
        "tasks": [_task_entry(session, t, b) for t, b in plan],
        "token_bytes": [base64.b64encode(b).decode("ascii") for b in token_bytes_table(session.tokenizer)],
    }
    path = out / BUNDLE_NAME
    path.write_text(json.dumps(bundle, separators=(",", ":")) + "\n")  # compact: ~50k token entries
    return path
