"""Write a demo bundle for the Android and iOS example apps (examples/android, examples/ios).

``otaro demo ARTIFACT --write-mobile-bundle DIR`` copies the ONNX artifact into
DIR and writes ``demo_bundle.json`` next to it: the task script already
tokenized (prompt and option ids), the policy's precision per task, the
model's I/O names (which input is the token ids, the ``bits`` precision, the
positions, and which output feeds which KV-cache input on the next step), and
per-token bytes for detokenizing. The apps then need only onnxruntime's mobile
API and a JSON parser: no tokenizer library, no Python.

Bundle format (``format_version`` 1)::

    {"format": "otaro-demo-bundle", "format_version": 1,
     "model_files": ["model.onnx", ...], "model_file": "model.onnx",
     "onnxruntime_version": "1.32.0", "onnx_ir_version": 10, "onnx_opset": 18, "kernels": "fused",
     "precisions": [3, ...], "max_seq_len": 256, "vocab_size": 259, "eos_token_ids": [256],
     "io": {"input_ids": "input_ids", "bits": "bits", "logits": "logits",
            "position": {"name": "position_ids", "rank": 2} | null,
            "attention_mask": "attention_mask" | null,
            "cache": [{"input": "past.0.key", "output": "present.0.key",
                       "empty_shape": [1, 2, 0, 16], "seq_axis": 2}, ...]},
     "tasks": [{"name", "kind": "choose"|"generate", "bits", "prompt", "prompt_ids",
                "options": [{"text", "ids"}] | "max_new_tokens"}],
     "token_bytes": ["<base64>", ...]}

``examples/mobile/bundle_runner.py`` runs a bundle with onnxruntime's Python API
exactly as the apps do (same steps, same I/O); the test suite checks it
against ``otaro_export.runtime``.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

from otaro_export.demo.policy import Policy
from otaro_export.demo.tasks import Task
from otaro_export.demo.token_bytes import token_bytes_table
from otaro_export.demo.toml_io import DemoConfigError

BUNDLE_NAME = "demo_bundle.json"
FORMAT_VERSION = 1
_POSITION_NAMES = ("position_ids", "cache_position", "positions")


def _seq_axis(shape: list) -> int:
    """The growing axis of a cache input: its symbolic dim other than batch (else -2, [B, H, S, D])."""
    symbolic = [i for i, d in enumerate(shape) if not isinstance(d, int) and i != 0]
    return symbolic[0] if len(symbolic) == 1 else len(shape) - 2


def _static_dims(shape: list, seq_axis: int, name: str, model: dict) -> list[int]:
    dims = []
    for i, d in enumerate(shape):
        if i == seq_axis:
            dims.append(0)
        elif isinstance(d, int):
            dims.append(d)
        elif i == 0:
            dims.append(1)  # batch
        else:
            raise DemoConfigError(f"cache input {name!r} has a symbolic dim {d!r} at axis {i}; cannot size it")
    return dims


def describe_io(session, manifest) -> dict:
    """Map the ONNX model's inputs/outputs to their roles (see the module docstring)."""
    inputs = {i.name: list(i.shape) for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    bits = next((n for n in inputs if n == "bits"), None)
    if "input_ids" not in inputs or bits is None:
        raise DemoConfigError(f"the ONNX model needs inputs 'input_ids' and 'bits'; it has {sorted(inputs)}")
    logits = "logits" if "logits" in outputs else outputs[0]
    position = next((n for n in _POSITION_NAMES if n in inputs), None)
    mask = "attention_mask" if "attention_mask" in inputs else None
    roles = {"input_ids", bits, position, mask}
    cache_in = [n for n in inputs if n not in roles]
    cache_out = [n for n in outputs if n != logits]
    if len(cache_in) != len(cache_out):
        raise DemoConfigError(
            f"cannot pair KV-cache inputs {cache_in} with outputs {cache_out}: expected one output per input"
        )
    cache = []
    for name_in, name_out in zip(cache_in, cache_out):  # exporters list past and present in the same order
        axis = _seq_axis(inputs[name_in])
        cache.append(
            {
                "input": name_in,
                "output": name_out,
                "empty_shape": _static_dims(inputs[name_in], axis, name_in, manifest.model),
                "seq_axis": axis,
            }
        )
    return {
        "input_ids": "input_ids",
        "bits": bits,
        "logits": logits,
        "position": None if position is None else {"name": position, "rank": len(inputs[position])},
        "attention_mask": mask,
        "cache": cache,
    }


def _task_entry(session, task: Task, bits: int) -> dict:
    entry = {
        "name": task.name,
        "kind": task.kind,
        "bits": bits,
        "prompt": task.prompt,
        "prompt_ids": session.encode_prompt(task.prompt, chat=True),
    }
    if task.kind == "choose":
        tok = session.tokenizer
        entry["options"] = [
            {"text": o, "ids": list(tok(o, add_special_tokens=False)["input_ids"])} for o in task.options
        ]
    else:
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = session.directory
    model_files = [manifest.artifact] + sorted(
        p.name
        for p in src.iterdir()
        if p.is_file() and p.name.startswith(manifest.artifact) and p.name != manifest.artifact
    )  # external-data files are named after the model ("model.onnx.data")
    for name in model_files:
        shutil.copyfile(src / name, out / name)
    # Stock onnxruntime, no custom-op library: what the apps run (SEFPLinear falls back to its function body).
    io = describe_io(ort.InferenceSession(str(src / manifest.artifact), providers=["CPUExecutionProvider"]), manifest)
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
