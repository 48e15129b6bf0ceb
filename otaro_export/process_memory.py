"""Memory readings of the current process, on psutil: the one place that reads them.

Used by ``otaro demo`` (RSS per task), ``otaro bench`` workers, the benchmarks
and the ExecuTorch runtime (which mappings of a ``.pte`` are resident).

* ``rss_bytes()``: resident set size now.
* ``peak_rss_bytes()``: the high-water mark over the process's life (Linux
  VmHWM), which is why benchmarks measure each configuration in a fresh process.
* ``file_rss_bytes()``: resident file-backed pages (Linux RssFile + RssShmem),
  e.g. the mmapped weights of a ``.pte``.
* ``mapped_file_rss_bytes(path)``: resident pages of this process's mappings of
  one file (an mmapped artifact pages in only what a run touched).
* ``file_mappings(path)`` / ``mapped_paths()``: the mappings themselves.

Readings a platform does not offer are ``None`` (bytes) or NaN (the ``*_mib``
variants), never an exception: they are diagnostics, not results.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

MIB = 2**20

# memory_maps() is Linux/Windows/BSD only; a process may also be denied access to its own maps.
_UNAVAILABLE = (psutil.Error, NotImplementedError, AttributeError, OSError)


@dataclass(frozen=True)
class Mapping:
    """One mapping of a file into this process."""

    start: int
    end: int
    perms: str  # e.g. "r--p"
    rss_bytes: int

    @property
    def size(self) -> int:
        return self.end - self.start


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def _proc_status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int | None:
    # Linux: VmHWM of this process's own memory. Not ru_maxrss: across fork + exec the kernel carries the
    # high-water mark of the forked copy of the parent (its whole RSS) into the child's ru_maxrss, so every
    # child of a big parent would report the parent's peak.
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return max(hwm * 1024, rss_bytes())
    try:
        import resource  # Unix: ru_maxrss is VmHWM, in KiB on Linux and bytes on macOS

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = int(peak) if psutil.MACOS else int(peak) * 1024
    except ImportError:
        peak = getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows
        if peak is None:
            return None
    # The kernel folds the current RSS into its high-water mark lazily: never report less than now.
    return max(int(peak), rss_bytes())


def file_rss_bytes() -> int | None:
    shared = getattr(psutil.Process().memory_info(), "shared", None)  # Linux only
    return None if shared is None else int(shared)


def _maps() -> list | None:
    try:
        return psutil.Process().memory_maps(grouped=False)
    except _UNAVAILABLE:
        return None


def _mappings_of(maps: list, path: str | Path) -> list[Mapping]:
    target = os.path.realpath(path)  # the kernel reports mapped paths already resolved
    found = []
    for m in maps:
        if m.path == target:
            start, end = (int(x, 16) for x in m.addr.split("-"))
            found.append(Mapping(start, end, m.perms, int(m.rss)))
    return found


def file_mappings(path: str | Path) -> list[Mapping]:
    """This process's mappings of ``path``; empty when it is not mapped or the maps are unreadable."""
    return _mappings_of(_maps() or [], path)


def mapped_file_rss_bytes(path: str | Path) -> int | None:
    """Resident bytes of this process's mappings of ``path``: 0 when not mapped, None when maps are unreadable."""
    maps = _maps()
    return None if maps is None else sum(m.rss_bytes for m in _mappings_of(maps, path))


def mapped_paths() -> list[Path]:
    """Every file mapped into this process (libraries, mmapped data); empty where the maps are unreadable."""
    return sorted({Path(m.path) for m in _maps() or [] if m.path.startswith(os.sep)})


def _mib(nbytes: int | None) -> float:
    return math.nan if nbytes is None else nbytes / MIB


def rss_mib() -> float:
    return _mib(rss_bytes())


def peak_rss_mib() -> float:
    return _mib(peak_rss_bytes())


def file_rss_mib() -> float:
    return _mib(file_rss_bytes())


def mapped_file_rss_mib(path: str | Path) -> float:
    return _mib(mapped_file_rss_bytes(path))


def format_mib(nbytes: int | None) -> str:
    """``"123.4"`` (MiB, one decimal) or ``"n/a"``."""
    return "n/a" if nbytes is None else f"{nbytes / MIB:.1f}"
