"""Load the ExecuTorch kernel library that registers ``otaro::sefp_linear.out`` and ``otaro::sefp_embedding.out``.

Loading the shared library runs its static registration (``EXECUTORCH_LIBRARY``)
into ExecuTorch's kernel registry. Registering the same op twice aborts the
process, so :func:`load_executorch_kernels` loads it at most once per process,
even if another copy of this module (or another cache directory's build of the
library) already did: it checks the process's mapped files first.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

from otaro_export import process_memory
from otaro_export.errors import KernelLibraryError

from .build import library_path

LIBRARY_NAME = "libotaro_sefp_executorch.so"
OP_NAME = "otaro::sefp_linear.out"
EMBEDDING_OP_NAME = "otaro::sefp_embedding.out"

_lock = threading.Lock()
_loaded: Path | None = None
_handle: ctypes.CDLL | None = None  # kept alive: unloading would unregister nothing and leave dangling kernels


def _already_mapped() -> Path | None:
    """A copy of the library already loaded in this process (by anyone), if any."""
    # where the process's mappings are unreadable this finds nothing: the module-level flag still guards
    return next((path for path in process_memory.mapped_paths() if path.name == LIBRARY_NAME), None)


def load_executorch_kernels() -> Path:
    """Build (first use) and load the kernel library once; return its path.

    Call before loading a ``.pte`` that contains ``otaro::sefp_linear`` or ``otaro::sefp_embedding``.
    """
    global _loaded, _handle
    with _lock:
        if _loaded is not None:
            return _loaded
        mapped = _already_mapped()
        if mapped is not None:
            _loaded = mapped
            return mapped
        # executorch's Python runtime must be loaded first so the library's
        # registration lands in the same registry the runtime reads
        import executorch.runtime  # noqa: F401

        path = library_path("executorch")
        try:
            _handle = ctypes.CDLL(str(path), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            raise KernelLibraryError(f"cannot load the ExecuTorch SEFP kernel library {path}: {exc}") from exc
        _loaded = path
        return path
