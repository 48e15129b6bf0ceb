"""Run a demo bundle the way the Android and iOS apps do: onnxruntime + a JSON file, nothing else.

    python examples/mobile/bundle_runner.py BUNDLE_DIR [--bits TASK=E5M5 ...] [--custom-op-library SO]

Each function here has a twin in examples/android/.../DemoEngine.kt and
examples/ios/OtaroDemo/DemoEngine.swift (same names, same steps), so this file
is the executable specification of the apps' logic, and the test suite runs it
against otaro_export.runtime. It uses no otaro_export code on purpose.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


class BundleModel:
    """One ONNX session, loaded once; ``step`` runs tokens at a precision against the KV cache.

    Each cache is ONE buffer of ``max_seq_len`` positions for the model's life, bound as both its past
    input and its present output (io binding): onnxruntime's GroupQueryAttention writes a step's new
    positions into it in place, so a step copies no cache (docs/FORMAT.md §8).
    """

    def __init__(self, bundle_dir: Path, custom_op_library: str | None = None):
        self.bundle = json.loads((bundle_dir / "demo_bundle.json").read_text())
        if self.bundle.get("format") != "otaro-demo-bundle" or self.bundle.get("format_version") != 2:
            raise ValueError(
                f"{bundle_dir} holds no version-2 otaro demo bundle: write it again with this otaro-export "
                "(otaro demo ARTIFACT --write-mobile-bundle DIR)"
            )
        self.io = self.bundle["io"]
        options = ort.SessionOptions()
        if custom_op_library is not None:  # the fused SEFP kernels, as the Android app loads them when shipped
            options.register_custom_ops_library(str(custom_op_library))
        self.session = ort.InferenceSession(
            str(bundle_dir / self.bundle["model_file"]), options, providers=["CPUExecutionProvider"]
        )
        self.token_bytes = [base64.b64decode(t) for t in self.bundle["token_bytes"]]
        self.cache = [ort.OrtValue.ortvalue_from_numpy(np.zeros(c["shape"], np.float32)) for c in self.io["cache"]]
        self.reset()

    def reset(self) -> None:
        # Positions at or past total_sequence_length are never read: nothing to clear.
        self.position = 0

    def step(self, ids: list[int], bits: int, rows: list[int]) -> np.ndarray:
        """Logits [len(rows), V] at ``rows`` (indices into ``ids``) for ``ids`` at positions position.."""
        if bits not in self.bundle["precisions"]:
            raise ValueError(f"E5M{bits} is not served by this model ({self.bundle['precisions']})")
        n = len(ids)
        total = self.position + n
        if total > self.bundle["max_seq_len"]:
            raise ValueError(f"{total} positions exceed this model's max_seq_len {self.bundle['max_seq_len']}")
        io = self.io
        feeds = {  # referenced until the run ends: the binding points at their memory
            io["input_ids"]: np.asarray([ids], np.int64),
            io["bits"]: np.asarray(bits, np.int64),  # a 0-dim tensor: the per-call precision
            io["seqlens_k"]: np.asarray([total - 1], np.int32),
            io["total_sequence_length"]: np.asarray(total, np.int32),
            io["logits_positions"]: np.asarray(rows, np.int64),
        }
        binding = self.session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        binding.bind_output(io["logits"])
        for slot, buffer in zip(io["cache"], self.cache):
            binding.bind_ortvalue_input(slot["input"], buffer)
            binding.bind_ortvalue_output(slot["output"], buffer)
        self.session.run_with_iobinding(binding)
        self.position = total
        return binding.get_outputs()[0].numpy()[0]

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.token_bytes[i] for i in ids).decode("utf-8", errors="replace")


def score_options(model: BundleModel, task: dict) -> tuple[str, dict[str, float]]:
    """Mean log-probability of each option's tokens after the prompt; the best option wins."""
    prompt = task["prompt_ids"]
    scores = {}
    for option in task["options"]:
        model.reset()
        # position i's logits predict token i + 1: only the rows that predict the option's tokens
        rows = list(range(len(prompt) - 1, len(prompt) - 1 + len(option["ids"])))
        logits = model.step(prompt + option["ids"], task["bits"], rows).astype(np.float64)
        logp = logits - logits.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        scores[option["text"]] = float(np.mean(logp[np.arange(len(option["ids"])), option["ids"]]))
    best = max(task["options"], key=lambda o: scores[o["text"]])["text"]  # ties: first option
    return best, scores


def generate(model: BundleModel, task: dict) -> tuple[str, int]:
    """Greedy generation with the KV cache; returns (text, new tokens)."""
    model.reset()
    eos = set(model.bundle["eos_token_ids"])
    # the last new token is never fed back: a prompt of S tokens leaves room for max_seq_len - S + 1
    budget = min(task["max_new_tokens"], model.bundle["max_seq_len"] - len(task["prompt_ids"]) + 1)
    out: list[int] = []
    if budget <= 0:
        return "", 0
    prompt = task["prompt_ids"]
    logits = model.step(prompt, task["bits"], [len(prompt) - 1])  # the prompt's last logits only
    while True:
        token = int(np.argmax(logits[-1]))
        out.append(token)
        if token in eos or len(out) >= budget:
            break
        logits = model.step([token], task["bits"], [0])
    return model.decode([t for t in out if t not in eos]), len(out)


def run_bundle(
    bundle_dir: Path, overrides: dict[str, int] | None = None, echo=print, custom_op_library: str | None = None
) -> list[dict]:
    t0 = time.perf_counter()
    model = BundleModel(bundle_dir, custom_op_library)
    echo(
        f"loaded {model.bundle['model_file']} once in {time.perf_counter() - t0:.2f} s (session 0x{id(model.session):x})"
    )
    results = []
    for task in model.bundle["tasks"]:
        task = {**task, "bits": (overrides or {}).get(task["name"], task["bits"])}
        t = time.perf_counter()
        if task["kind"] == "choose":
            answer, scores = score_options(model, task)
            tokens = sum(len(task["prompt_ids"]) + len(o["ids"]) for o in task["options"])
        else:
            (answer, tokens), scores = generate(model, task), {}
        latency = time.perf_counter() - t
        results.append({"name": task["name"], "bits": task["bits"], "answer": answer, "scores": scores})
        echo(
            f"{task['name']:<14} E5M{task['bits']}  {latency * 1e3:8.1f} ms  {tokens / latency:8.1f} tok/s  -> {answer!r}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--bits", action="append", default=[], metavar="TASK=E5Mk", help="override a task's precision")
    parser.add_argument(
        "--custom-op-library",
        metavar="SO",
        help="register the SEFP custom-op library (fused kernels) for this platform",
    )
    args = parser.parse_args()
    overrides = {}
    for item in args.bits:
        name, _, precision = item.partition("=")
        overrides[name] = int(precision.upper().removeprefix("E5M"))
    run_bundle(args.bundle_dir, overrides, custom_op_library=args.custom_op_library)


if __name__ == "__main__":
    main()
