"""The phone side of the ARM64 check: numpy + onnxruntime (+ examples/mobile/bundle_runner.py), nothing else.

    python phone_run.py MODEL.onnx CALLS_DIR OUT_DIR --run fused=LIB.so --run stock=- [--tasks fused=BUNDLE_DIR]

Runs under qemu-aarch64 with the aarch64 Python and onnxruntime wheel, and on the x86 host with the same
code, so the two runs differ only in the machine, the onnxruntime build and the kernel library. It imports
no otaro_export code (that needs torch). For each ``--run NAME=LIBRARY`` (``-``: stock onnxruntime, whose
model-local function bodies stand in for the custom ops), one session:

* CALLS_DIR holds the onnxruntime calls that ``otaro_export.runtime`` made on x86 for each precision
  (``calls.json`` + one ``.npz`` of input feeds per call, written by record.py); each is replayed with
  ``InferenceSession.run`` and its first output (the logits) saved to ``OUT_DIR/NAME/logits.npz``;
* the last call of the first precision is replayed once more with ``bits = 9``: the kernel (or the
  function body) must refuse it;
* ``--tasks NAME=BUNDLE_DIR``: the demo's task flow (``otaro demo --write-mobile-bundle``) through the
  apps' engine, examples/mobile/bundle_runner.py (twin of the Android and iOS DemoEngine).

``OUT_DIR/NAME/result.json`` holds the machine, versions, the E5M9 error and the task results. One
process serves every run: importing onnxruntime under qemu takes tens of seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def load_session(model: Path, library: str | None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if library is not None:
        options.register_custom_ops_library(library)
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def load_feeds(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as data:
        return {name: data[name] for name in data.files}


def first_error_line(exc: Exception) -> str:
    message = str(exc).splitlines()[0]
    return message.partition("Status Message: ")[2][:160] or message[:160]


def run_one(model: Path, calls: Path, library: str | None, bundle: Path | None) -> tuple[dict, dict]:
    spec = json.loads((calls / "calls.json").read_text())
    t0 = time.perf_counter()
    session = load_session(model, library)
    result = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "library": library,
        "load_s": time.perf_counter() - t0,
    }
    logits = {}
    for bits, files in spec["calls"].items():
        for i, name in enumerate(files):
            logits[f"{bits}_{i}"] = session.run(None, load_feeds(calls / name))[0]
    feeds = load_feeds(calls / spec["calls"][next(iter(spec["calls"]))][-1])
    feeds[spec["bits_input"]] = np.asarray(9, feeds[spec["bits_input"]].dtype)
    try:
        session.run(None, feeds)
        result["invalid_bits_error"] = None
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidArgument types
        result["invalid_bits_error"] = first_error_line(exc)
    if bundle is not None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "mobile"))
        from bundle_runner import run_bundle

        t = time.perf_counter()
        result["tasks"] = run_bundle(bundle, echo=lambda _: None, custom_op_library=library)
        result["tasks_s"] = time.perf_counter() - t
    return result, logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("calls", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=LIBRARY", help="LIBRARY '-': none")
    parser.add_argument("--tasks", action="append", default=[], metavar="NAME=BUNDLE_DIR")
    args = parser.parse_args()
    bundles = dict(item.split("=", 1) for item in args.tasks)
    for item in args.run:
        name, _, library = item.partition("=")
        bundle = Path(bundles[name]) if name in bundles else None
        result, logits = run_one(args.model, args.calls, None if library in ("", "-") else library, bundle)
        (args.out / name).mkdir(parents=True, exist_ok=True)
        np.savez(args.out / name / "logits.npz", **logits)
        (args.out / name / "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
