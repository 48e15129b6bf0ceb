"""OpenMPNestingGuard: max-active-levels 0 in every loaded OpenMP runtime while any guard is entered."""

import ctypes
import threading

import pytest
import torch  # noqa: F401  (loads torch's OpenMP runtime, the one ExecuTorch's custom ops reach through MKL)

from otaro_export.runtime import openmp_nesting
from otaro_export.runtime.openmp_nesting import KEEP_ENV, OpenMPNestingGuard, loaded_openmp_runtimes


@pytest.fixture
def runtimes():
    paths = loaded_openmp_runtimes()
    if not paths:
        pytest.skip("no OpenMP runtime is loaded in this process (a torch build without OpenMP)")
    libs = [ctypes.CDLL(str(p)) for p in paths]
    for lib in libs:
        lib.omp_get_max_active_levels.restype = ctypes.c_int
    return libs


def levels(libs):
    return [lib.omp_get_max_active_levels() for lib in libs]


def test_torch_brings_an_openmp_runtime_on_linux():
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("torch's Linux wheels carry libgomp; other platforms differ")
    assert any(p.name.startswith("libgomp") for p in loaded_openmp_runtimes())


def test_levels_are_zero_inside_and_restored_after(runtimes):
    before = levels(runtimes)
    assert all(v > 0 for v in before)  # otherwise this test could not tell the guard worked
    guard = OpenMPNestingGuard()
    assert guard.enabled and guard.runtimes >= len(runtimes)
    with guard:
        assert levels(runtimes) == [0] * len(runtimes)
    assert levels(runtimes) == before


def test_restored_when_the_guarded_call_raises(runtimes):
    before = levels(runtimes)
    with pytest.raises(RuntimeError), OpenMPNestingGuard():
        raise RuntimeError("execution failed")
    assert levels(runtimes) == before


def test_overlapping_guards_restore_only_when_the_last_ends(runtimes):
    before = levels(runtimes)
    first, second = OpenMPNestingGuard(), OpenMPNestingGuard()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert levels(runtimes) == [0] * len(runtimes)  # the second call still runs
    second.__exit__(None, None, None)
    assert levels(runtimes) == before


def test_guards_in_threads_leave_the_process_as_they_found_it(runtimes):
    before = levels(runtimes)
    guard = OpenMPNestingGuard()
    seen = []

    def work():
        for _ in range(200):
            with guard:
                seen.append(levels(runtimes))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(v == [0] * len(runtimes) for v in seen)
    assert levels(runtimes) == before
    assert openmp_nesting._active == 0


def test_the_environment_switch_leaves_openmp_alone(runtimes, monkeypatch):
    monkeypatch.setenv(KEEP_ENV, "1")
    before = levels(runtimes)
    guard = OpenMPNestingGuard()
    assert not guard.enabled
    with guard:
        assert levels(runtimes) == before
