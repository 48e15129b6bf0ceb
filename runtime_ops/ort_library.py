"""The onnxruntime custom-op library: ``ai.otaro::SEFPLinear`` and ``ai.otaro::SEFPEmbedding`` on the C++ core.

Usage::

    from otaro_export.runtime_ops import ort_library
    sess = onnxruntime.InferenceSession(path, ort_library.session_options(num_threads=2))

The library (``csrc/onnxruntime/*.cc`` + the kernel core) is compiled on first
use by :mod:`otaro_export.runtime_ops.build` and cached. It declares its own
subset of onnxruntime's C ABI (``csrc/onnxruntime/ort_abi.h``) and needs
onnxruntime >= 1.17 (C API version 17).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

from otaro_export.errors import KernelLibraryError

#: C API version the library is built against (kOtaroOrtApiVersion in ort_abi.h)
ORT_API_VERSION = 17
DOMAIN = "ai.otaro"
OP_TYPE = "SEFPLinear"
EMBEDDING_OP_TYPE = "SEFPEmbedding"


def library_path() -> Path:
    """Path of the compiled custom-op library, building it on first use."""
    from otaro_export.runtime_ops.build import library_path as build_library

    try:
        return build_library("onnxruntime")
    except KernelLibraryError:
        raise
    except Exception as exc:  # a bug or an environment problem below the builder: say what to do
        raise KernelLibraryError(
            f"cannot build the onnxruntime SEFP kernel library: {exc}; check that a C++17 compiler (g++) "
            "is installed, or load the model without the library (slow function-body path)"
        ) from exc


def session_options(num_threads: int | None = None):
    """An ``onnxruntime.SessionOptions`` with the SEFP custom-op library registered.

    ``num_threads`` sets the intra-op thread count (the kernel runs on those threads);
    ``None`` keeps onnxruntime's default.
    """
    import onnxruntime as ort

    if num_threads is not None and (not isinstance(num_threads, int) or num_threads < 1):
        raise ValueError(f"num_threads must be a positive int or None, got {num_threads!r}")
    path = library_path()
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    try:
        options.register_custom_ops_library(str(path))
    except Exception as exc:  # onnxruntime raises its own exception types (Fail, RuntimeError)
        raise KernelLibraryError(
            f"onnxruntime {ort.__version__} could not load the SEFP custom-op library {path}: {exc}. "
            f'Fix: use onnxruntime >= 1.17 (`pip install -U "onnxruntime>=1.20"`); if the cached library is '
            f"damaged, delete {path.parent} so it is rebuilt"
        ) from exc
    return options


def onnxruntime_c_library() -> Path:
    """The C API shared library shipped inside the onnxruntime wheel (exports ``OrtGetApiBase``)."""
    import onnxruntime as ort

    capi = Path(ort.__file__).resolve().parent / "capi"
    candidates = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
    if not candidates:
        raise KernelLibraryError(f"no libonnxruntime shared library in {capi}; cannot reach onnxruntime's C API")
    return candidates[0]


def abi_selfcheck() -> None:
    """Exercise every OrtApi entry the library declares against the installed onnxruntime.

    Raises KernelLibraryError naming the first entry that misbehaves. The
    kernel-context entries are only reachable while a model runs; running the
    op covers them.
    """
    ort_c = ctypes.CDLL(str(onnxruntime_c_library()))
    ort_c.OrtGetApiBase.restype = ctypes.c_void_p
    path = library_path()
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise KernelLibraryError(f"cannot load the SEFP custom-op library {path}: {exc}") from exc
    lib.otaro_ort_abi_selfcheck.restype = ctypes.c_int
    lib.otaro_ort_abi_selfcheck.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    msg = ctypes.create_string_buffer(512)
    if not lib.otaro_ort_abi_selfcheck(ort_c.OrtGetApiBase(), msg, len(msg)):
        raise KernelLibraryError(
            f"the SEFP library's declaration of onnxruntime's C ABI is wrong: {msg.value.decode()}"
        )
