"""No nested OpenMP teams while an ExecuTorch method runs in this process.

Why: the executorch wheel's LLM custom ops (``llama::custom_sdpa``, in fp32
programs and in fused ones exported before the project's
``otaro_llm::kv_attention``) run their matrix products through
``cpublas::gemm``, which in the Python runtime is the MKL inside
``libtorch_cpu``. MKL opens an OpenMP team of one thread per core from inside
each of ExecuTorch's own pool threads: on 2 cores that is 4 busy threads, and
libgomp's workers spin after every region, taking cycles from the pool's next
kernel. Measured on the default model (2 threads, E5M3), the fused ``.pte``
(then with ``custom_sdpa``) decoded 1.05-1.53x faster (median 1.20x, one
process, alternating) with those teams off, and alike with
``OMP_NUM_THREADS=1`` set before start.

How: OpenMP's max-active-levels is a process-wide setting in libgomp (torch's
OpenMP runtime on Linux); at 0 every parallel region runs on the thread that
opens it. :class:`OpenMPNestingGuard` sets it to 0 for every OpenMP runtime
loaded in the process while at least one guarded call runs, and restores each
runtime's previous value when the last one ends. Outside those calls torch's
own parallelism is untouched; a torch op that another Python thread runs during
a decode step runs on one thread (a speed effect only). ``$OTARO_KEEP_NESTED_OPENMP=1``
(read per guard) leaves the setting alone, to measure the difference.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

from otaro_export import process_memory

#: file-name prefixes of the OpenMP runtimes: GNU (torch on Linux), LLVM, Intel
OPENMP_LIBRARY_PREFIXES = ("libgomp", "libomp", "libiomp5")
KEEP_ENV = "OTARO_KEEP_NESTED_OPENMP"

_lock = threading.Lock()
_runtimes: dict[Path, ctypes.CDLL] = {}  # every OpenMP runtime any guard has found, process-wide
_active = 0  # guarded calls running now
_saved: list[tuple[ctypes.CDLL, int]] = []  # (runtime, its max-active-levels before the first of them)


def loaded_openmp_runtimes() -> list[Path]:
    """The OpenMP runtime libraries mapped into this process (several wheels bundle their own copy)."""
    return sorted(
        {p for p in process_memory.mapped_paths() if p.name.startswith(OPENMP_LIBRARY_PREFIXES) and ".so" in p.name}
    )


def _open(path: Path) -> ctypes.CDLL | None:
    try:
        lib = ctypes.CDLL(str(path))  # already loaded: dlopen returns that instance
        get, set_ = lib.omp_get_max_active_levels, lib.omp_set_max_active_levels
    except (OSError, AttributeError):
        return None
    get.restype, get.argtypes = ctypes.c_int, []
    set_.restype, set_.argtypes = None, [ctypes.c_int]
    return lib


def _discover() -> int:
    """Add the runtimes loaded since the last look; return how many are known."""
    with _lock:
        for path in loaded_openmp_runtimes():
            if path not in _runtimes:
                lib = _open(path)
                if lib is not None:
                    _runtimes[path] = lib
        return len(_runtimes)


class OpenMPNestingGuard:
    """Context manager: max-active-levels 0 in every known OpenMP runtime while any guard is entered.

    Making a guard looks for runtimes loaded since the last look (an ExecuTorch session makes
    it after loading its kernel libraries); entering costs a few ctypes calls.
    """

    def __init__(self) -> None:
        self.enabled = os.environ.get(KEEP_ENV, "").lower() not in ("1", "true", "yes")
        self.runtimes = _discover() if self.enabled else 0

    def __enter__(self) -> OpenMPNestingGuard:
        global _active
        if not self.enabled:
            return self
        with _lock:
            if _active == 0:
                _saved.clear()
                for lib in _runtimes.values():
                    _saved.append((lib, lib.omp_get_max_active_levels()))
                    lib.omp_set_max_active_levels(0)
            _active += 1
        return self

    def __exit__(self, *exc) -> None:
        global _active
        if not self.enabled:
            return
        with _lock:
            _active -= 1
            if _active == 0:
                for lib, levels in _saved:
                    lib.omp_set_max_active_levels(levels)
                _saved.clear()
