"""Run an exported ``model.pte`` with ExecuTorch's runtime: load once (mmap, no mlock), any precision per call.

The program's ``forward(input_ids [1, S], input_pos [1], bits [], logits_positions [P])``
keeps its K/V caches as mutable buffers between calls
(:mod:`otaro_export.export.executorch_decoder`). A cache needs no clearing:
a call at positions ``p .. p + S - 1`` overwrites those slots and attention
reads only slots ``<= p + S - 1``, so stale entries of an earlier, longer
sequence are never read. ``_reset`` therefore only forgets the position; the
tests check that a "reset" session gives the same logits as a fresh one.

Memory: the runtime mmaps the file. Its Python bindings ask for the mapping
to be mlocked (``MlockConfig::UseMlockIgnoreErrors``; the Python API has no
load-mode option), which would read the whole file into locked memory at
load. :func:`mlock_disabled` makes that mlock fail for the duration of the
load (``RLIMIT_MEMLOCK`` 0 and, for a privileged process, ``CAP_IPC_LOCK``
dropped from the loading thread's effective set), which the loader ignores:
weight pages then fault in only when a kernel reads them, so resident memory
follows the precision (E5M3 reads ``p0`` + exponents of every SEFP layer).
Where that cannot be arranged, the mlock is undone after the load instead
(:func:`release_locked_pages`).

Threads: the session sizes ExecuTorch's pool (``num_threads``), which runs
XNNPACK and ExecuTorch's own ops; the project's kernels (SEFP, attention) run
that many threads on the kernel core's pool (docs/EXPORT_EXECUTORCH.md, 1.03-1.17x
decode measured). While a step runs, OpenMP teams are kept from nesting
(:mod:`otaro_export.runtime.openmp_nesting`: 1.2x decode measured).
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from pathlib import Path

import numpy as np
import torch

from otaro_export import process_memory
from otaro_export.errors import ArtifactError, KernelLibraryError
from otaro_export.manifest import LLM_CUSTOM_OPS, Manifest
from otaro_export.runtime.openmp_nesting import OpenMPNestingGuard
from otaro_export.runtime.session import Session

SEFP_OUT_OPS = ("otaro::sefp_linear.out", "otaro::sefp_embedding.out")
SEFP_OUT_OP = SEFP_OUT_OPS[0]
LLM_OUT_OPS = ("llama::update_cache.out", "llama::custom_sdpa.out")
KERNEL_LIBRARY_FIX = (
    "load the project's ExecuTorch kernel library first "
    "(otaro_export.runtime_ops.executorch_kernels.load_executorch_kernels(), which builds it with g++ on first use), "
    "or re-export with `otaro-export --target executorch --kernels portable` for a .pte the stock runtime runs"
)


def _load_kernel_library() -> None:
    from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels

    load_executorch_kernels()


def ensure_kernel_library(runtime) -> None:
    """Make sure the SEFP ``.out`` kernels are registered, or raise naming the fix."""
    if SEFP_OUT_OP in runtime.operator_registry.operator_names:
        return
    try:
        _load_kernel_library()
    except (KernelLibraryError, ImportError, OSError) as exc:
        raise KernelLibraryError(
            f"this .pte uses {SEFP_OUT_OP} (exported with --kernels fused) but the kernel library "
            f"could not be loaded ({exc}); fix: {KERNEL_LIBRARY_FIX}"
        ) from exc
    if SEFP_OUT_OP not in runtime.operator_registry.operator_names:
        raise KernelLibraryError(
            f"the ExecuTorch kernel library loaded but did not register {SEFP_OUT_OP}; fix: {KERNEL_LIBRARY_FIX}"
        )


_llm_ops_lock = threading.Lock()


def needs_llm_custom_ops(manifest: Manifest) -> bool:
    """Whether the program calls ExecuTorch's ``llama::`` kernels (``extra.runtime_ops``).

    Portable attention never does, nor do fused programs with the project's ``otaro_llm::kv_attention``;
    a manifest from before ``runtime_ops`` was recorded does with llm-ops attention.
    """
    extra = manifest.extra
    if "runtime_ops" in extra:
        return LLM_CUSTOM_OPS in (extra["runtime_ops"] or [])
    return extra.get("attention", "llm-ops") == "llm-ops"


def ensure_llm_custom_ops(runtime) -> None:
    """Register ExecuTorch's LLM custom-op kernels (``llama::update_cache``, ``llama::custom_sdpa``).

    They ship in the executorch wheel (``extension/llm/custom_ops/libcustom_ops_aot_lib.so``),
    whose load registers both the torch ops and their ExecuTorch ``.out`` kernels. The library is
    loaded directly (not through ``custom_ops.py``, which also imports torch's compiler stack).
    """
    if all(op in runtime.operator_registry.operator_names for op in LLM_OUT_OPS):
        return
    with _llm_ops_lock:
        if not all(op in runtime.operator_registry.operator_names for op in LLM_OUT_OPS):
            _load_llm_ops_library()
    missing = [op for op in LLM_OUT_OPS if op not in runtime.operator_registry.operator_names]
    if missing:
        raise KernelLibraryError(
            f"the executorch wheel's LLM custom ops did not register {missing}; this .pte needs executorch's "
            "extension/llm/custom_ops (pip install executorch==1.5.*)"
        )


def _load_llm_ops_library() -> None:
    import importlib.util

    try:
        torch.ops.llama.custom_sdpa.default  # noqa: B018  (already loaded by someone else)
        return
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("executorch.extension.llm.custom_ops")
    if spec is None or not spec.submodule_search_locations:
        raise KernelLibraryError("executorch.extension.llm.custom_ops is not installed (pip install executorch)")
    libs = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*custom_ops_aot_lib.*"))
    if len(libs) != 1:
        raise KernelLibraryError(f"expected one custom_ops_aot_lib in the executorch wheel, found {len(libs)}")
    import executorch.extension.pybindings.portable_lib  # noqa: F401  (the runtime the kernels register into)

    torch.ops.load_library(str(libs[0]))


# ---- loading without mlock ---------------------------------------------------

_CAP_IPC_LOCK = 14
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_ipc_lock():
    """Clear CAP_IPC_LOCK from this thread's effective set; return a function restoring it (or None)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = _CapHeader(_CAP_VERSION_3, 0), (_CapData * 2)()
        if libc.capget(ctypes.byref(header), data) != 0 or not data[0].effective & (1 << _CAP_IPC_LOCK):
            return None
        saved = data[0].effective
        data[0].effective &= ~(1 << _CAP_IPC_LOCK)
        if libc.capset(ctypes.byref(header), data) != 0:
            return None

        def restore() -> None:
            data[0].effective = saved
            libc.capset(ctypes.byref(_CapHeader(_CAP_VERSION_3, 0)), data)

        return restore
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def mlock_disabled():
    """Make ``mlock`` fail in this thread while the block runs (best effort; Linux).

    ExecuTorch's loader ignores a failed mlock and keeps the plain mmap: pages
    are then read on first use instead of all at load.
    """
    restore_limit = None
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, hard))

        def restore_limit() -> None:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    except (ImportError, OSError, ValueError):
        pass
    restore_cap = _drop_ipc_lock()
    try:
        yield
    finally:
        if restore_cap is not None:
            restore_cap()
        if restore_limit is not None:
            restore_limit()


_MADV_DONTNEED = 4


def release_locked_pages(path: Path) -> int:
    """Undo an mlock of the mmapped ``path``: unlock its read-only mappings, drop their pages; return the bytes.

    The fallback of :func:`mlock_disabled` (a platform where the load still
    locked the file). Pages fault back in from the page cache on first use, so
    afterwards RSS counts only the weights actually read. Best effort.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        released = 0
        for mapping in process_memory.file_mappings(path):
            if "w" in mapping.perms:
                continue  # only this file's read-only mappings: nothing there can hold written data
            addr, size = ctypes.c_void_p(mapping.start), ctypes.c_size_t(mapping.size)
            libc.munlock(addr, size)
            if libc.madvise(addr, size, _MADV_DONTNEED) == 0:
                released += mapping.size
        return released
    except (OSError, AttributeError, ValueError):
        return 0


def _locked_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmLck:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _set_threads(num_threads: int) -> None:
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None and num_threads > 0 and portable_lib._threadpool_get_thread_count() != num_threads:
        reset(num_threads)


class ExecuTorchSession(Session):
    """``lazy_weights`` (default True): weight pages load on first use (no mlock); False keeps the runtime's mlock."""

    def __init__(
        self, directory: Path, manifest: Manifest, tokenizer=None, num_threads: int = 2, lazy_weights: bool = True
    ):
        super().__init__(directory, manifest, tokenizer)
        from executorch.runtime import Runtime, Verification

        if not isinstance(num_threads, int) or num_threads < 1:
            raise ValueError(f"num_threads must be a positive int, got {num_threads!r}")
        self._input_names = list(manifest.inputs)
        if self._input_names[:2] != ["input_ids", "input_pos"]:
            raise ArtifactError(
                f"{directory}: a .pte with inputs {self._input_names} predates this otaro-export's ExecuTorch "
                "decoder (input_ids, input_pos, bits, logits_positions); re-export it"
            )
        runtime = Runtime.get()
        if manifest.kernel_library == "executorch":
            ensure_kernel_library(runtime)
        elif manifest.kernel_library is not None:
            raise ArtifactError(
                f"{directory}: unknown kernel library {manifest.kernel_library!r} for an ExecuTorch artifact"
            )
        if needs_llm_custom_ops(manifest):
            ensure_llm_custom_ops(runtime)
        _set_threads(num_threads)
        path = self.directory / manifest.artifact
        data_files = list(manifest.extra.get("data_files") or [])
        data_path = self.directory / data_files[0] if data_files else None
        if data_path is not None and not data_path.is_file():
            raise ArtifactError(
                f"{path.name} keeps its weights in {data_path.name}, which is missing from {self.directory}"
            )
        method_name = manifest.extra.get("method", "forward")
        self.lazy_weights = bool(lazy_weights)
        locked_before = _locked_kib()
        load_mode = mlock_disabled() if self.lazy_weights else contextlib.nullcontext()
        try:
            with load_mode:  # a path (not bytes): the runtime mmaps the file
                self._program = runtime.load_program(
                    path, verification=Verification.InternalConsistency, data_path=data_path
                )
                if method_name not in self._program.method_names:
                    raise ArtifactError(
                        f"{path} has no method {method_name!r} (it has {sorted(self._program.method_names)})"
                    )
                self._method = self._program.load_method(method_name)
        except RuntimeError as exc:
            raise ArtifactError(
                f"cannot load {path} with the ExecuTorch runtime ({exc}): corrupt or incompatible file, "
                "or an operator or backend missing?"
            ) from exc
        if self.lazy_weights and _locked_kib() > locked_before:  # the platform locked it anyway: undo
            for file in [path, *([data_path] if data_path is not None else [])]:
                release_locked_pages(file)
        self._max_seq_len = int(manifest.model.get("max_seq_len") or 0)
        if self._max_seq_len < 1:
            raise ArtifactError(f"{directory}/manifest.json: model.max_seq_len is missing")
        self._bits_cache: dict[int, torch.Tensor] = {}
        self._length = 0
        # made after the kernel libraries are loaded, so it finds every OpenMP runtime they brought
        self._no_nested_openmp = OpenMPNestingGuard()

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def _reset(self) -> None:
        # Nothing to clear (see the module docstring): positions restart at 0.
        self._length = 0

    def _bits(self, bits: int) -> torch.Tensor:
        if bits not in self._bits_cache:
            self._bits_cache[bits] = torch.tensor(bits, dtype=torch.int64)
        return self._bits_cache[bits]

    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        s = input_ids.shape[1]
        if start_pos < 0 or start_pos + s > self.max_seq_len:
            raise ValueError(
                f"positions {start_pos}..{start_pos + s - 1} exceed this artifact's KV cache of {self.max_seq_len}"
            )
        if start_pos > self._length:
            raise ValueError(f"step at position {start_pos} but the cache holds {self._length} positions")
        inputs = [
            torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            torch.tensor([start_pos], dtype=torch.int64),
            self._bits(bits),
            torch.arange(s - 1 if last_only else 0, s, dtype=torch.int64),
        ]
        try:
            with self._no_nested_openmp:  # llama::custom_sdpa's MKL would nest OpenMP teams in the pool's threads
                (logits,) = self._method.execute(inputs)
        except RuntimeError as exc:
            raise ArtifactError(f"ExecuTorch execution failed ({exc})") from exc
        self._length = start_pos + s
        return logits.numpy().astype(np.float32, copy=False)
