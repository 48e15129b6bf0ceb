"""Build-on-first-use of the kernel libraries: cache, locking, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from otaro_export.errors import KernelLibraryError
from otaro_export.runtime_ops import build

# A child process that builds the core library into OTARO_KERNEL_CACHE_DIR, loads
# it and runs one tiny call (proves the cached file is complete and usable).
_CHILD = textwrap.dedent(
    """
    import torch
    from otaro_export import packing, sefp
    from otaro_export.runtime_ops.core_ctypes import CoreKernels
    k = CoreKernels.load()
    p = packing.pack(sefp.quantize(torch.ones(2, 64)))
    y = k.linear(torch.ones(1, 64), p, 8)
    assert torch.equal(y, torch.full((1, 2), 64.0)), y
    print(k.path)
    """
)


def _child(cache_dir, **env):
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD],
        env={**os.environ, "OTARO_KERNEL_CACHE_DIR": str(cache_dir), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_concurrent_first_use_builds_once_into_the_cache(tmp_path):
    procs = [_child(tmp_path), _child(tmp_path)]
    results = [p.communicate(timeout=600) for p in procs]
    for p, (_out, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    (lib,) = paths
    assert lib.startswith(str(tmp_path)) and lib.endswith("libotaro_sefp_core.so")
    libs = list(tmp_path.rglob("*.so"))
    assert [str(p) for p in libs] == [lib]
    assert not list(tmp_path.rglob(".build-*")), "staging dirs must be cleaned up"
    mtime = os.stat(lib).st_mtime_ns
    # a later process reuses the cached file
    p = _child(tmp_path)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err[-3000:]
    assert out.strip() == lib and os.stat(lib).st_mtime_ns == mtime


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "definitely-not-a-compiler-xyz")
    with pytest.raises(KernelLibraryError, match="no C\\+\\+ compiler found.*apt-get install g\\+\\+"):
        build.find_compiler()


def test_missing_compiler_in_a_fresh_process(tmp_path):
    p = _child(tmp_path, CXX="definitely-not-a-compiler-xyz")
    _, err = p.communicate(timeout=600)
    assert p.returncode != 0
    assert "KernelLibraryError: no C++ compiler found" in err


def test_compile_failure_reports_the_compiler_output(tmp_path, monkeypatch):
    fake = tmp_path / "fake-g++"
    fake.write_text(
        '#!/bin/sh\nif [ "$1" = "--version" ]; then echo fake 1.0; exit 0; fi\necho "error: boom at line 7" >&2\nexit 1\n'
    )
    fake.chmod(0o755)
    monkeypatch.setenv("OTARO_KERNEL_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(KernelLibraryError, match="(?s)compiling .* failed.*boom at line 7"):
        build._build_cached(build._target("core"), str(fake))
    assert not list((tmp_path / "cache").rglob("*.so"))


def test_cache_key_depends_on_compiler_and_flags():
    target = build._target("core")
    base = build._digest(target, "g++ 12")
    assert build._digest(target, "g++ 13") != base
    target.units[0].flags.append("-DEXTRA")
    assert build._digest(target, "g++ 12") != base


def test_executorch_target_uses_the_wheel_headers_and_library():
    include, lib, version = build.executorch_dirs()
    target = build._target("executorch")
    assert any(str(include) in " ".join(u.flags) for u in target.units)
    assert f"-Wl,-rpath,{lib}" in target.link_flags
    assert f"executorch={version}" in target.extra_hash


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown kernel library kind"):
        build.library_path("tensorrt")


def test_ort_header_selection(tmp_path, monkeypatch):
    official = tmp_path / "include"
    official.mkdir()
    (official / build.ORT_HEADER).write_text("// stand-in\n")
    monkeypatch.setattr(build, "_ORT_INCLUDE_CANDIDATES", (str(tmp_path / "absent"),))
    monkeypatch.delenv("OTARO_ORT_INCLUDE_DIR", raising=False)
    assert build.ort_include_dir() is None  # nothing installed: ort_abi.h's declarations
    assert build._ort_header() == ([], ["ort-abi=ort_abi.h"])
    monkeypatch.setattr(build, "_ORT_INCLUDE_CANDIDATES", (str(tmp_path / "absent"), str(official)))
    assert build.ort_include_dir() == official  # a system copy is found
    flags, key = build._ort_header()
    assert flags == ["-DOTARO_ORT_OFFICIAL_HEADERS", "-isystem", str(official)] and key[0].startswith("ort-header=")
    monkeypatch.setenv("OTARO_ORT_INCLUDE_DIR", "none")
    assert build.ort_include_dir() is None  # the environment overrides the search
    monkeypatch.setenv("OTARO_ORT_INCLUDE_DIR", str(tmp_path))
    with pytest.raises(KernelLibraryError, match="holds no onnxruntime_c_api.h"):
        build.ort_include_dir()


def test_ort_library_against_the_official_header_passes_the_ort_library_tests():
    # With onnxruntime's own header, ort_abi.h's static_asserts check every slot it declares, and the
    # library must build and behave exactly as with the hand-declared subset: run that module's tests.
    official = build.ort_include_dir()
    if official is None:
        pytest.skip(
            f"no official {build.ORT_HEADER} installed (Debian 13+: apt-get install libonnxruntime-dev; "
            "or set OTARO_ORT_INCLUDE_DIR)"
        )
    tests = os.path.join(os.path.dirname(__file__), "test_ort_library.py")
    env = {**os.environ, "OTARO_ORT_INCLUDE_DIR": str(official)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", tests],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
