"""Run an exported ``model.pte`` with ExecuTorch's runtime: load once (mmap), any precision per call.

The program's ``forward(input_ids [1, s], cache_position [s], bits [])`` keeps
its static K/V cache as mutable buffers between calls. A static cache needs
no clearing: a call at positions ``p..p+s-1`` overwrites those slots and the
causal mask (built from ``cache_position``) hides every slot after the last
position written, so stale entries of an earlier, longer sequence are never
read. ``_reset`` therefore only forgets the position; the tests check that a
"reset" session gives the same logits as a freshly loaded one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otaro_export import process_memory
from otaro_export.errors import ArtifactError, KernelLibraryError
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import Session

SEFP_OUT_OP = "otaro::sefp_linear.out"
KERNEL_LIBRARY_FIX = (
    "load the project's ExecuTorch kernel library first "
    "(otaro_export.runtime_ops.executorch_kernels.load_executorch_kernels(), which builds it with g++ on first use), "
    "or re-export with `otaro-export --target executorch --kernels portable` for a .pte the stock runtime runs"
)


def _load_kernel_library() -> None:
    from otaro_export.runtime_ops.executorch_kernels import load_executorch_kernels

    load_executorch_kernels()


def ensure_kernel_library(runtime) -> None:
    """Make sure ``otaro::sefp_linear.out`` is registered, or raise naming the fix."""
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


_MADV_DONTNEED = 4


def release_locked_pages(path: Path) -> int:
    """Undo the Python runtime's mlock of the mmapped ``.pte``; return the bytes released.

    ExecuTorch's pybindings map the file with ``MlockConfig::UseMlockIgnoreErrors``:
    where mlock is allowed (root, desktop Linux) every page of the file becomes
    resident at load, so RSS no longer shows which planes a precision reads (on a
    phone the mlock fails and pages load lazily). This unlocks the read-only
    mappings of the file and drops their pages; they fault back in from the page
    cache on first use, so afterwards RSS counts only the weights actually read.
    Best effort: on any platform issue it does nothing.
    """
    import ctypes

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


def _set_threads(num_threads: int) -> None:
    from executorch.extension.pybindings import portable_lib

    reset = getattr(portable_lib, "_unsafe_reset_threadpool", None)
    if reset is not None and num_threads > 0 and portable_lib._threadpool_get_thread_count() != num_threads:
        reset(num_threads)


class ExecuTorchSession(Session):
    def __init__(
        self, directory: Path, manifest: Manifest, tokenizer=None, num_threads: int = 2, lazy_weights: bool = True
    ):
        super().__init__(directory, manifest, tokenizer)
        from executorch.runtime import Runtime, Verification

        runtime = Runtime.get()
        if manifest.kernel_library == "executorch":
            ensure_kernel_library(runtime)
        elif manifest.kernel_library is not None:
            raise ArtifactError(
                f"{directory}: unknown kernel library {manifest.kernel_library!r} for an ExecuTorch artifact"
            )
        _set_threads(num_threads)
        path = self.directory / manifest.artifact
        data_files = list(manifest.extra.get("data_files") or [])
        data_path = self.directory / data_files[0] if data_files else None
        if data_path is not None and not data_path.is_file():
            raise ArtifactError(
                f"{path.name} keeps its weights in {data_path.name}, which is missing from {self.directory}"
            )
        method_name = manifest.extra.get("method", "forward")
        try:
            # A path (not bytes) makes the runtime mmap the file (see release_locked_pages).
            self._program = runtime.load_program(
                path, verification=Verification.InternalConsistency, data_path=data_path
            )
        except RuntimeError as exc:
            raise ArtifactError(
                f"cannot load {path} with the ExecuTorch runtime ({exc}): corrupt or incompatible file?"
            ) from exc
        if method_name not in self._program.method_names:
            raise ArtifactError(f"{path} has no method {method_name!r} (it has {sorted(self._program.method_names)})")
        try:
            self._method = self._program.load_method(method_name)
        except RuntimeError as exc:
            raise ArtifactError(
                f"cannot load method {method_name!r} of {path} ({exc}): an operator or backend missing?"
            ) from exc
        self.lazy_weights = lazy_weights
        if lazy_weights:  # after load_method: XNNPACK has packed what it keeps in its own memory
            for file in [path, *([data_path] if data_path is not None else [])]:
                release_locked_pages(file)
        self._takes_bits = "bits" in manifest.inputs
        self._max_seq_len = int(manifest.model.get("max_seq_len") or 0)
        if self._max_seq_len < 1:
            raise ArtifactError(f"{directory}/manifest.json: model.max_seq_len is missing")
        self._bits_cache: dict[int, torch.Tensor] = {}

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def _reset(self) -> None:
        # Nothing to clear (see the module docstring): positions restart at 0.
        pass

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
        inputs = [
            torch.from_numpy(np.ascontiguousarray(input_ids, dtype=np.int64)),
            torch.arange(start_pos, start_pos + s, dtype=torch.int64),
        ]
        if self._takes_bits:
            inputs.append(self._bits(bits))
        try:
            (logits,) = self._method.execute(inputs)
        except RuntimeError as exc:
            raise ArtifactError(f"ExecuTorch execution failed ({exc})") from exc
        return logits.numpy().astype(np.float32, copy=False)
