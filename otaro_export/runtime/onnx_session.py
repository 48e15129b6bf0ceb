"""Run an exported ``model.onnx`` with onnxruntime: one session serves every precision.

The graph (see :mod:`otaro_export.export.kv_decoder`) takes the KV cache as
explicit ``past_key_i`` / ``past_value_i`` inputs and returns ``present_*``
outputs with the new positions appended; this session keeps the presents as
onnxruntime values between steps and feeds them straight back (no copy into
numpy), so each decode step costs one token's compute.

Kernels: an artifact exported with ``--kernels fused`` needs the project's
onnxruntime custom-op library (``otaro_export.runtime_ops.ort_library``),
which runs ``ai.otaro::SEFPLinear`` with the fused C++ kernel; ``portable``
artifacts (and ``use_library=False``) run the model-local function body with
stock onnxruntime. ``bits`` is checked here before onnxruntime sees it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from otaro_export.errors import ArtifactError, KernelLibraryError
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import Session

_FIX_LIBRARY = (
    "Fix: install a C++17 compiler (g++) so otaro-export can build the library, or load the artifact "
    "with use_library=False (slow portable path), or re-export with --kernels portable"
)


def _session_options(num_threads: int, use_library: bool):
    import onnxruntime as ort

    if not use_library:
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        return options
    try:
        from otaro_export.runtime_ops import ort_library
    except ImportError as exc:
        raise KernelLibraryError(
            f"this artifact needs the SEFP onnxruntime kernel library, which this install lacks ({exc}). "
            + _FIX_LIBRARY
        ) from exc
    try:
        return ort_library.session_options(num_threads=num_threads)
    except KernelLibraryError as exc:
        raise KernelLibraryError(
            f"this artifact needs the SEFP onnxruntime kernel library: {exc}. {_FIX_LIBRARY}"
        ) from exc


class OnnxSession(Session):
    def __init__(self, directory, manifest: Manifest, tokenizer=None, num_threads: int = 2, use_library=None):
        super().__init__(Path(directory), manifest, tokenizer)
        import onnxruntime as ort

        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        self.use_library = manifest.kernel_library == "onnxruntime" if use_library is None else bool(use_library)
        path = self.directory / manifest.artifact
        options = _session_options(num_threads, self.use_library)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises Fail/InvalidGraph/... for a damaged file
            hint = ""
            if "ai.otaro" in str(exc) or "SEFPLinear" in str(exc):
                hint = " (the SEFPLinear op could not be resolved)"
            raise ArtifactError(
                f"onnxruntime cannot load {path}{hint}: {exc}. The file may be corrupt or truncated, or its "
                f"{path.name}.data file missing: re-export it with otaro-export"
            ) from exc
        self._input_names = {i.name for i in self._sess.get_inputs()}
        self._present_names = [o.name for o in self._sess.get_outputs() if o.name.startswith("present_")]
        # present_key_i becomes the next call's past_key_i: pair them by name, not position
        self._past_names = [name.replace("present_", "past_", 1) for name in self._present_names]
        past_inputs = {name for name in self._input_names if name.startswith("past_")}
        if set(self._past_names) != past_inputs or "input_ids" not in self._input_names:
            raise ArtifactError(f"{path} is not an otaro-export KV-cache decoder (inputs {sorted(self._input_names)})")
        info = manifest.model
        self._empty = np.zeros((1, int(info["num_kv_heads"]), 0, int(info["head_dim"])), dtype=np.float32)
        self._max_seq_len = int(info["max_seq_len"])
        self._reset()

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def _reset(self) -> None:
        import onnxruntime as ort

        empty = ort.OrtValue.ortvalue_from_numpy(self._empty)
        self._past = [empty] * len(self._past_names)
        self._length = 0

    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int) -> np.ndarray:

        seq = input_ids.shape[1]
        if start_pos != self._length:
            raise ValueError(f"step at position {start_pos} but the cache holds {self._length} positions")
        if start_pos + seq > self._max_seq_len:
            raise ValueError(f"{start_pos + seq} positions exceed this artifact's max_seq_len {self._max_seq_len}")
        bits = self.check_bits(bits)  # also in-graph, but a clean error beats an onnxruntime one
        # Keep the numpy inputs referenced until the run ends: the binding may point at their memory.
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "cache_position": np.arange(start_pos, start_pos + seq, dtype=np.int64),
            "bits": np.array(bits, dtype=np.int64),
        }
        binding = self._sess.io_binding()
        for name, array in feeds.items():
            if name in self._input_names:
                binding.bind_cpu_input(name, array)
        for name, value in zip(self._past_names, self._past):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits")
        for name in self._present_names:
            binding.bind_output(name)
        self._sess.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        self._past = list(outputs[1:])
        self._length = start_pos + seq
        return outputs[0].numpy()

    def __repr__(self) -> str:
        mode = "fused kernel library" if self.use_library else "portable function body"
        return f"OnnxSession({self.directory}, {mode})"
