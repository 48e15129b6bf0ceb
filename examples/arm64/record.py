"""Record the calls ``otaro_export.runtime`` makes into onnxruntime or ExecuTorch on x86, to replay on aarch64.

The ARM64 check must work on whatever artifact it is given, and the exported graphs' inputs change
(cache layout, position inputs, attention ops). So it does not rebuild the feeds itself: it runs the
project's own runtime on x86 (``Session.forward``) and records each call at the runtimes' public Python
API (``onnxruntime.InferenceSession.run`` / ``run_with_iobinding``, ``executorch.runtime.Method.execute``),
with every input as it was when the call started. phone_run.py (onnxruntime) and pte_runner.cc
(ExecuTorch) replay them on aarch64.
"""

from __future__ import annotations

import contextlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Recorded:
    """The runtime's calls for each precision, in order, and what ``Session.forward`` returned."""

    calls: dict[int, list] = field(default_factory=dict)  # bits -> [feeds | (method, inputs, first output)]
    forward: dict[int, np.ndarray] = field(default_factory=dict)  # bits -> logits [S, V]


class _RecordingBinding:
    """Wraps an ``onnxruntime.IOBinding``: copies each bound input at bind time (before any in-place update)."""

    def __init__(self, binding):
        self._binding = binding
        self.feeds: dict[str, np.ndarray] = {}

    def bind_cpu_input(self, name, array):
        self.feeds[name] = np.array(array, copy=True)
        return self._binding.bind_cpu_input(name, array)

    def bind_ortvalue_input(self, name, value):
        self.feeds[name] = np.array(value.numpy(), copy=True)
        return self._binding.bind_ortvalue_input(name, value)

    def bind_input(self, *args, **kwargs):
        raise NotImplementedError("the ARM64 check records bind_cpu_input / bind_ortvalue_input, not bind_input")

    def __getattr__(self, name):
        return getattr(self._binding, name)


@contextlib.contextmanager
def _onnxruntime_recording(sink: list):
    import onnxruntime as ort

    base = ort.InferenceSession

    class RecordingSession(base):
        def run(self, output_names, input_feed, run_options=None):
            sink.append(
                {k: np.array(v.numpy() if hasattr(v, "numpy") else v, copy=True) for k, v in input_feed.items()}
            )
            return super().run(output_names, input_feed, run_options)

        def io_binding(self):
            return _RecordingBinding(super().io_binding())

        def run_with_iobinding(self, iobinding, run_options=None):
            if isinstance(iobinding, _RecordingBinding):
                sink.append(dict(iobinding.feeds))
                iobinding = iobinding._binding
            return super().run_with_iobinding(iobinding, run_options)

    ort.InferenceSession = RecordingSession
    try:
        yield
    finally:
        ort.InferenceSession = base


def _as_numpy(value):
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy().copy()
    if isinstance(value, bool | int):
        return int(value)
    raise TypeError(f"cannot record an ExecuTorch input of type {type(value).__name__}")


@contextlib.contextmanager
def _executorch_recording(sink: list):
    from executorch.runtime import Method

    base = Method.execute

    def execute(self, inputs):
        recorded = [_as_numpy(v) for v in inputs]
        outputs = base(self, inputs)
        sink.append((self.metadata.name(), recorded, _as_numpy(outputs[0])))
        return outputs

    Method.execute = execute
    try:
        yield
    finally:
        Method.execute = base


def record_forward(directory: Path, prompt, bits: list[int], **load_options) -> tuple[object, list[int], Recorded]:
    """Load ``directory`` with ``otaro_export.runtime`` and run ``forward(ids, b)`` for each ``b``, recording.

    ``prompt(session) -> ids`` picks the token ids; returns (session, ids, recorded).
    """
    from otaro_export import runtime
    from otaro_export.manifest import Manifest

    target = Manifest.load(directory).target
    sink: list = []
    recording = _onnxruntime_recording if target == "onnx" else _executorch_recording
    result = Recorded()
    with recording(sink):
        session = runtime.load(directory, **load_options)
        sink.clear()  # nothing that loading ran (a warm-up, say) belongs to a precision
        ids = list(prompt(session))
        for b in bits:
            result.forward[b] = np.asarray(session.forward(np.asarray([ids], np.int64), b))[0]
            result.calls[b], sink[:] = list(sink), []
    missing = [b for b in bits if not result.calls[b]]
    if missing:
        raise RuntimeError(f"otaro_export.runtime made no recordable {target} call at E5M{missing[0]}")
    return session, ids, result


# -- replay files --------------------------------------------------------------------------------------------


def write_onnx_calls(directory: Path, recorded: Recorded, bits_input: str = "bits") -> Path:
    """``calls.json`` + one ``.npz`` of feeds per call, for phone_run.py."""
    directory.mkdir(parents=True, exist_ok=True)
    spec = {"bits_input": bits_input, "calls": {}}
    for b, calls in recorded.calls.items():
        spec["calls"][str(b)] = []
        for i, feeds in enumerate(calls):
            if bits_input not in feeds:
                raise RuntimeError(f"the recorded onnxruntime call has no {bits_input!r} input ({sorted(feeds)})")
            name = f"E5M{b}_{i}.npz"
            np.savez(directory / name, **feeds)
            spec["calls"][str(b)].append(name)
    (directory / "calls.json").write_text(json.dumps(spec))
    return directory


_DTYPES = {np.dtype(np.float32): 0, np.dtype(np.int64): 1, np.dtype(np.int32): 2, np.dtype(np.bool_): 3}


def write_pte_calls(path: Path, calls: list[tuple[str, list]]) -> None:
    """The replay file pte_runner.cc reads (format in its header comment): (method, inputs) per call."""
    with open(path, "wb") as f:
        f.write(b"OTRC" + struct.pack("<II", 1, len(calls)))
        for method, inputs in calls:
            name = method.encode()
            f.write(struct.pack("<I", len(name)) + name + struct.pack("<I", len(inputs)))
            for value in inputs:
                if isinstance(value, int):
                    f.write(struct.pack("<BBq", 4, 0, value))
                    continue
                a = np.array(value, order="C", copy=True)  # np.ascontiguousarray would make a 0-dim array 1-dim
                if a.dtype not in _DTYPES:
                    raise TypeError(f"pte_runner takes float32/int64/int32/bool tensors, not {a.dtype}")
                f.write(struct.pack("<BB", _DTYPES[a.dtype], a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape))
                f.write(a.tobytes())


def read_pte_outputs(path: Path, n: int) -> list[np.ndarray | int]:
    """pte_runner's OUT.bin: per call the first output, or the runtime's error code (an int)."""
    data, pos, out = path.read_bytes(), 0, []
    for _ in range(n):
        (status,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if status != 0:
            out.append(status)
            continue
        ndim = data[pos]
        shape = struct.unpack_from(f"<{ndim}q", data, pos + 1)
        pos += 1 + 8 * ndim
        count = int(np.prod(shape))
        out.append(np.frombuffer(data, np.float32, count, pos).reshape(shape))
        pos += 4 * count
    return out


def bits_position(recorded: Recorded) -> int:
    """Which ExecuTorch input is the precision: the 0-dim int64 that equals ``bits`` in every call."""
    candidates = None
    for b, calls in recorded.calls.items():
        for _method, inputs, _out in calls:
            here = {
                i
                for i, v in enumerate(inputs)
                if (isinstance(v, int) and v == b) or (isinstance(v, np.ndarray) and v.ndim == 0 and v.item() == b)
            }
            candidates = here if candidates is None else candidates & here
    if not candidates or len(recorded.calls) < 2:
        raise RuntimeError("cannot tell which .pte input is bits (record at least two precisions)")
    return min(candidates)
