"""Build the native SEFP kernel libraries on first use, and cache them.

Public entry points:

* :func:`library_path(kind) <library_path>` with ``kind`` one of
  ``"core"`` (the kernel core plus a small C ABI for ctypes),
  ``"onnxruntime"`` (core + ``csrc/onnxruntime/*.cc``: the ORT custom-op library) and
  ``"executorch"`` (core + ``csrc/executorch/*.cc`` against the executorch wheel's
  headers, linked to its ``libexecutorch.so``). Returns the path of a shared library.
* :func:`build_aarch64_tests` cross-compiles the core and its C++ test driver
  into a static ARM64 executable (run under qemu-aarch64 by the test suite).
* :func:`ort_include_dir` says which onnxruntime C API the ORT library is built
  against: onnxruntime's official ``onnxruntime_c_api.h`` where one is installed
  (``$OTARO_ORT_INCLUDE_DIR``, or a system include dir, e.g. Debian 13's
  ``libonnxruntime-dev``), else the subset ``csrc/onnxruntime/ort_abi.h`` declares.

Every translation unit of the core is compiled with the flags of its ISA
(``sefp_kernel_avx2.cc`` with ``-mavx2 -mfma -mf16c``, ...); the core picks one
at run time from the CPU's features, so the library runs on any x86-64.

Cache: ``$OTARO_KERNEL_CACHE_DIR`` or ``~/.cache/otaro-export/kernels``, one
directory per hash of (sources, flags, compiler version, executorch version).
A file lock serializes builders and the library is moved into place with an
atomic rename, so concurrent processes never see a half-written file.
Set ``CXX`` (or ``OTARO_CROSS_CXX`` for ARM64) to choose the compiler.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from otaro_export.errors import KernelLibraryError

CSRC = Path(__file__).resolve().parent / "csrc"
CORE_DIR = CSRC / "core"
KINDS = ("core", "onnxruntime", "executorch")
BUILD_VERSION = "1"  # bump to invalidate every cached library

_COMMON_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-pthread", "-Wall", "-Wextra", "-Wno-unused-parameter"]
# Core symbols stay private to each library: the ORT and ExecuTorch libraries
# (and the ctypes core) can share one process without interposing each other.
_CORE_FLAGS = ["-fvisibility=hidden", "-fvisibility-inlines-hidden"]
_X86_ISA_FLAGS = {
    "sefp_kernel_avx2.cc": ["-mavx2", "-mfma", "-mf16c"],
    "sefp_kernel_avx2_int8.cc": ["-mavx2", "-mfma", "-mf16c"],
    "sefp_kernel_avx512.cc": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq"],
    "sefp_kernel_avx512_vnni.cc": [
        *("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
    ],
    "sefp_kernel_avx512_vbmi.cc": [
        *("-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
        "-mavx512vbmi",
    ],
}
_X86_ONLY = set(_X86_ISA_FLAGS)
# the SDOT kernel is compiled for ARMv8.2 and only called where the CPU reports the dot-product extension
_ARM_ISA_FLAGS = {"sefp_kernel_neon_dotprod.cc": ["-march=armv8.2-a+dotprod"]}
_ARM_ONLY = {"sefp_kernel_neon.cc", *_ARM_ISA_FLAGS}
_CORE_ONLY_SOURCES = {"sefp_capi.cc"}  # the ctypes C ABI, only in the "core" library

#: onnxruntime's official C API header; distributions install it here (Debian/Ubuntu: libonnxruntime-dev)
ORT_HEADER = "onnxruntime_c_api.h"
_ORT_INCLUDE_CANDIDATES = ("/usr/include/onnxruntime", "/usr/local/include/onnxruntime", "/usr/local/include")

_lock = threading.Lock()
_built: dict[str, Path] = {}


@dataclass
class _Unit:
    source: Path
    flags: list[str]


@dataclass
class _Target:
    name: str  # output file name
    units: list[_Unit]
    link_flags: list[str] = field(default_factory=list)
    extra_hash: list[str] = field(default_factory=list)
    shared: bool = True


def cache_root() -> Path:
    env = os.environ.get("OTARO_KERNEL_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "otaro-export" / "kernels"


def find_compiler(env_var: str = "CXX", default: str = "g++") -> str:
    """Absolute path of the C++ compiler, or a KernelLibraryError that says how to get one."""
    name = os.environ.get(env_var) or default
    path = shutil.which(name)
    if path is None:
        raise KernelLibraryError(
            f"no C++ compiler found ({env_var}={name!r} is not on PATH): the SEFP kernel libraries are built "
            f"on first use; install one (e.g. `apt-get install g++`) or set {env_var} to a C++17 compiler"
        )
    return path


def _compiler_id(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60)
    except OSError as exc:
        raise KernelLibraryError(f"C++ compiler {cxx} cannot run: {exc}") from exc
    return out.stdout.strip()


def _core_units(arch: str, with_capi: bool) -> list[_Unit]:
    units = []
    for src in sorted(CORE_DIR.glob("*.cc")):
        if src.name in _CORE_ONLY_SOURCES and not with_capi:
            continue
        if src.name in _X86_ONLY and arch != "x86_64":
            continue
        if src.name in _ARM_ONLY and arch != "aarch64":
            continue
        isa_flags = _X86_ISA_FLAGS if arch == "x86_64" else _ARM_ISA_FLAGS
        units.append(_Unit(src, [*_CORE_FLAGS, *isa_flags.get(src.name, [])]))
    if not units:
        raise KernelLibraryError(f"no kernel core sources found under {CORE_DIR}")
    return units


def _host_arch() -> str:
    machine = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def executorch_dirs() -> tuple[Path, Path, str]:
    """(include dir, lib dir, version) of the installed executorch wheel."""
    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise KernelLibraryError("the executorch package is not installed: `pip install executorch`")
    root = Path(list(spec.submodule_search_locations)[0])
    include, lib = root / "include", root / "lib"
    if not (include / "executorch").is_dir() or not (lib / "libexecutorch.so").is_file():
        raise KernelLibraryError(
            f"the executorch wheel at {root} lacks include/executorch or lib/libexecutorch.so; "
            "the kernel library needs an executorch wheel that ships them (executorch>=1.0)"
        )
    from executorch.version import __version__ as version

    return include, lib, version


def ort_include_dir() -> Path | None:
    """The directory of onnxruntime's official ``onnxruntime_c_api.h``, or None for ``ort_abi.h``'s declarations.

    ``$OTARO_ORT_INCLUDE_DIR`` decides when set: a directory holding the header,
    or ``none`` to force the hand-declared subset. Otherwise the usual system
    include directories are searched (no PyPI wheel ships the header).
    """
    env = os.environ.get("OTARO_ORT_INCLUDE_DIR")
    if env is not None and env.strip():
        if env.strip().lower() == "none":
            return None
        directory = Path(env).expanduser()
        if not (directory / ORT_HEADER).is_file():
            raise KernelLibraryError(
                f"OTARO_ORT_INCLUDE_DIR={env} holds no {ORT_HEADER}; point it at onnxruntime's include "
                "directory, or set it to 'none' to build with csrc/onnxruntime/ort_abi.h"
            )
        return directory
    return next((Path(d) for d in _ORT_INCLUDE_CANDIDATES if (Path(d) / ORT_HEADER).is_file()), None)


def _ort_header() -> tuple[list[str], list[str]]:
    """(compile flags, cache-key parts) selecting the onnxruntime C API header of the ORT wrappers."""
    directory = ort_include_dir()
    if directory is None:
        return [], ["ort-abi=ort_abi.h"]
    digest = hashlib.sha256((directory / ORT_HEADER).read_bytes()).hexdigest()
    return ["-DOTARO_ORT_OFFICIAL_HEADERS", "-isystem", str(directory)], [f"ort-header={digest}"]


def _target(kind: str) -> _Target:
    arch = _host_arch()
    include = ["-I", str(CSRC)]
    if kind == "core":
        return _Target(
            "libotaro_sefp_core.so", [_Unit(u.source, [*u.flags, *include]) for u in _core_units(arch, True)]
        )
    core = [_Unit(u.source, [*u.flags, *include]) for u in _core_units(arch, False)]
    if kind == "onnxruntime":
        wrappers = sorted((CSRC / "onnxruntime").glob("*.cc"))
        if not wrappers:
            raise KernelLibraryError(f"no onnxruntime wrapper sources under {CSRC / 'onnxruntime'}")
        ort_flags, ort_key = _ort_header()
        return _Target(
            "libotaro_sefp_onnxruntime.so",
            core + [_Unit(s, [*include, *ort_flags]) for s in wrappers],
            extra_hash=ort_key,
        )
    if kind == "executorch":
        et_include, et_lib, et_version = executorch_dirs()
        wrappers = sorted((CSRC / "executorch").glob("*.cc"))
        if not wrappers:
            raise KernelLibraryError(f"no executorch wrapper sources under {CSRC / 'executorch'}")
        # the wheel ships its own copy of the c10 headers it needs under portable_type/c10
        et_c10 = et_include / "executorch" / "runtime" / "core" / "portable_type" / "c10"
        et_flags = [
            *include,
            "-isystem",
            str(et_include),
            "-isystem",
            str(et_c10),
            "-DC10_USING_CUSTOM_GENERATED_MACROS",
        ]
        link = [f"-L{et_lib}", "-lexecutorch"]
        if (et_lib / "libexecutorch_threadpool.so").is_file():
            # the kernels size their threads as the session sized this pool (executorch/kernel_threads.h)
            et_flags.append("-DET_USE_THREADPOOL")
            link.append("-lexecutorch_threadpool")
        return _Target(
            "libotaro_sefp_executorch.so",
            core + [_Unit(s, et_flags) for s in wrappers],
            link_flags=[*link, f"-Wl,-rpath,{et_lib}"],
            extra_hash=[f"executorch={et_version}", str(et_lib)],
        )
    raise ValueError(f"unknown kernel library kind {kind!r}; expected one of {list(KINDS)}")


def _digest(target: _Target, cxx_id: str) -> str:
    h = hashlib.sha256()
    for part in [BUILD_VERSION, cxx_id, target.name, *target.link_flags, *target.extra_hash]:
        h.update(part.encode() + b"\0")
    headers = sorted(CSRC.rglob("*.h"))
    for path in [*(u.source for u in target.units), *headers]:
        h.update(str(path.relative_to(CSRC)).encode() + b"\0" + path.read_bytes() + b"\0")
    for unit in target.units:
        h.update(" ".join(unit.flags).encode() + b"\0")
    return h.hexdigest()[:20]


def _run(cmd: list[str], what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelLibraryError(f"{what} failed to run: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        raise KernelLibraryError(f"{what} failed (exit {proc.returncode}):\n$ {' '.join(cmd)}\n{tail}")


def _compile_and_link(cxx: str, target: _Target, out: Path, work: Path) -> None:
    objects = [work / f"{i}_{u.source.stem}.o" for i, u in enumerate(target.units)]

    def compile_one(args):
        unit, obj = args
        _run(
            [cxx, *_COMMON_FLAGS, *unit.flags, "-c", str(unit.source), "-o", str(obj)], f"compiling {unit.source.name}"
        )

    with ThreadPoolExecutor(max_workers=max(1, min(len(objects), os.cpu_count() or 1))) as pool:
        list(pool.map(compile_one, zip(target.units, objects)))
    kind_flags = ["-shared"] if target.shared else ["-static"]
    _run(
        [cxx, *kind_flags, "-pthread", *map(str, objects), "-o", str(out), *target.link_flags],
        f"linking {target.name}",
    )


def _build_cached(target: _Target, cxx: str) -> Path:
    digest = _digest(target, _compiler_id(cxx))
    root = cache_root()
    final_dir = root / digest
    final = final_dir / target.name
    if final.is_file():
        return final
    try:
        final_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KernelLibraryError(f"cannot create the kernel cache dir {final_dir}: {exc}") from exc
    with open(root / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be building the same library
        try:
            if final.is_file():
                return final
            with tempfile.TemporaryDirectory(dir=final_dir, prefix=".build-") as tmp:
                work = Path(tmp)
                staged = work / target.name
                _compile_and_link(cxx, target, staged, work)
                os.replace(staged, final)  # atomic: readers see the old state or the whole file
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


def library_path(kind: str) -> Path:
    """Path of the native library ``kind`` ("core", "onnxruntime", "executorch"), building it if needed."""
    if kind not in KINDS:
        raise ValueError(f"unknown kernel library kind {kind!r}; expected one of {list(KINDS)}")
    with _lock:
        if kind not in _built:
            _built[kind] = _build_cached(_target(kind), find_compiler())
        return _built[kind]


def build_aarch64_tests() -> Path:
    """Cross-compile the core (scalar + NEON) and csrc/tests/*.cc into a static ARM64 test executable.

    Raises KernelLibraryError if ``aarch64-linux-gnu-g++`` (or ``$OTARO_CROSS_CXX``) is missing.
    """
    cxx = find_compiler("OTARO_CROSS_CXX", "aarch64-linux-gnu-g++")
    include = ["-I", str(CSRC)]
    units = [_Unit(u.source, [*u.flags, *include]) for u in _core_units("aarch64", False)]
    units += [_Unit(s, include) for s in sorted((CSRC / "tests").glob("*.cc"))]
    target = _Target("sefp_kernel_tests_aarch64", units, shared=False)
    return _build_cached(target, cxx)


def build_aarch64_library(kind: str, executorch_root: Path | None = None) -> Path:
    """Cross-compile the ``"onnxruntime"`` or ``"executorch"`` kernel library for ARM64 (scalar + NEON core).

    For the phone-path check (examples/arm64), which loads them into onnxruntime's and ExecuTorch's own
    aarch64 builds under qemu-aarch64. ``executorch_root`` (``"executorch"`` only) is the ``executorch``
    directory of an unpacked aarch64 executorch wheel: its ``include/`` and ``lib/libexecutorch.so``.
    Raises KernelLibraryError if ``aarch64-linux-gnu-g++`` (or ``$OTARO_CROSS_CXX``) is missing.
    """
    cxx = find_compiler("OTARO_CROSS_CXX", "aarch64-linux-gnu-g++")
    include = ["-I", str(CSRC)]
    core = [_Unit(u.source, [*u.flags, *include]) for u in _core_units("aarch64", False)]
    if kind == "onnxruntime":
        ort_flags, ort_key = _ort_header()  # the C API header is the same on every architecture
        wrappers = [_Unit(s, [*include, *ort_flags]) for s in sorted((CSRC / "onnxruntime").glob("*.cc"))]
        return _build_cached(_Target("libotaro_sefp_onnxruntime.so", core + wrappers, extra_hash=ort_key), cxx)
    if kind != "executorch":
        raise ValueError(f"unknown ARM64 kernel library kind {kind!r}; expected 'onnxruntime' or 'executorch'")
    if executorch_root is None:
        raise ValueError("the ARM64 ExecuTorch library needs executorch_root (an unpacked aarch64 executorch wheel)")
    et_include, et_lib = Path(executorch_root) / "include", Path(executorch_root) / "lib"
    if not (et_include / "executorch").is_dir() or not (et_lib / "libexecutorch.so").is_file():
        raise KernelLibraryError(f"{executorch_root} lacks include/executorch or lib/libexecutorch.so")
    et_c10 = et_include / "executorch" / "runtime" / "core" / "portable_type" / "c10"
    et_flags = [*include, "-isystem", str(et_include), "-isystem", str(et_c10), "-DC10_USING_CUSTOM_GENERATED_MACROS"]
    wrappers = [_Unit(s, et_flags) for s in sorted((CSRC / "executorch").glob("*.cc"))]
    target = _Target(
        "libotaro_sefp_executorch.so",
        core + wrappers,
        link_flags=[f"-L{et_lib}", "-lexecutorch"],
        extra_hash=[str(et_lib)],
    )
    return _build_cached(target, cxx)
