"""Run an exported ``model.onnx`` with onnxruntime: one session serves every precision.

The graph (see :mod:`otaro_export.export.llm_decoder`) takes each layer's KV
cache as a ``past_key_i`` / ``past_value_i`` input of ``max_seq_len``
positions and returns it as ``present_*``. This session allocates each cache
once and binds the same buffer as past and present, so onnxruntime's
GroupQueryAttention writes the step's positions in place: a decode step copies
no cache. ``logits_positions`` asks for the last position's logits only while
generating (a prompt's other rows of the vocabulary matmul are skipped).

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

#: the decoder graph's inputs besides the per-layer caches (otaro_export.export.llm_decoder)
STEP_INPUTS = ("input_ids", "bits", "seqlens_k", "total_sequence_length", "logits_positions")

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
        self._input_names = [i.name for i in self._sess.get_inputs()]
        self._present_names = [o.name for o in self._sess.get_outputs() if o.name.startswith("present_")]
        # present_key_i is written in place into past_key_i's buffer: pair them by name, not position
        self._past_names = [name.replace("present_", "past_", 1) for name in self._present_names]
        missing = (set(STEP_INPUTS) | set(self._past_names)) - set(self._input_names)
        if missing or len(self._past_names) != len(self._input_names) - len(STEP_INPUTS):
            raise ArtifactError(
                f"{path} is not an otaro-export decoder of this version (inputs {sorted(self._input_names)}); "
                "re-export it with this otaro-export"
            )
        info = manifest.model
        self._max_seq_len = int(info["max_seq_len"])
        cache_shape = (1, int(info["num_kv_heads"]), self._max_seq_len, int(info["head_dim"]))
        graph_shapes = {i.name: i.shape for i in self._sess.get_inputs() if i.name in self._past_names}
        wrong = {name: shape for name, shape in graph_shapes.items() if list(shape) != list(cache_shape)}
        if wrong:  # the graph's static cache shapes are the truth; a manifest that disagrees is damaged
            name, shape = next(iter(wrong.items()))
            raise ArtifactError(
                f"{path}: manifest.json describes KV caches of shape {list(cache_shape)} but the graph's "
                f"{name} is {list(shape)}: the manifest was edited or belongs to another export"
            )
        # One buffer per cache tensor for the session's life: bound as both the past input and the
        # present output, onnxruntime's GroupQueryAttention writes the new positions in place.
        self._cache = [
            ort.OrtValue.ortvalue_from_numpy(np.zeros(cache_shape, dtype=np.float32)) for _ in self._past_names
        ]
        # One binding for the session's life: the 2 x num_layers cache bindings never change, so a
        # step rebinds only its five small inputs and the logits (~1 ms of Python per step saved).
        self._binding = self._sess.io_binding()
        for past, present, buffer in zip(self._past_names, self._present_names, self._cache):
            self._binding.bind_ortvalue_input(past, buffer)
            self._binding.bind_ortvalue_output(present, buffer)
        self._vocab = int(info["vocab_size"])
        self._logits = {}  # rows -> a reused logits OrtValue (decode steps always ask for one row)
        self._reset()

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def _reset(self) -> None:
        # Positions past total_sequence_length are never read, so stale entries need no clearing.
        self._length = 0

    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        import onnxruntime as ort

        seq = input_ids.shape[1]
        if start_pos != self._length:
            raise ValueError(f"step at position {start_pos} but the cache holds {self._length} positions")
        if start_pos + seq > self._max_seq_len:
            raise ValueError(f"{start_pos + seq} positions exceed this artifact's max_seq_len {self._max_seq_len}")
        bits = self.check_bits(bits)  # also in-graph, but a clean error beats an onnxruntime one
        total = start_pos + seq
        # Keep the numpy inputs referenced until the run ends: the binding points at their memory.
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "bits": np.array(bits, dtype=np.int64),
            "seqlens_k": np.array([total - 1], dtype=np.int32),
            "total_sequence_length": np.array(total, dtype=np.int32),
            "logits_positions": np.arange(seq - 1 if last_only else 0, seq, dtype=np.int64),
        }
        rows = len(feeds["logits_positions"])
        logits = self._logits.get(rows)
        if logits is None:
            logits = ort.OrtValue.ortvalue_from_shape_and_type([1, rows, self._vocab], np.float32)
            if rows == 1:
                self._logits[rows] = logits
        binding = self._binding
        for name, array in feeds.items():
            binding.bind_cpu_input(name, array)
        binding.bind_ortvalue_output("logits", logits)
        self._sess.run_with_iobinding(binding)
        self._length = total
        return logits.numpy().copy()  # the buffer is reused by the next step

    def __repr__(self) -> str:
        mode = "fused kernel library" if self.use_library else "portable function body"
        return f"OnnxSession({self.directory}, {mode})"
