"""Resident memory of the current process (Linux /proc), for benchmark workers.

* ``rss_mib()`` / ``peak_rss_mib()``: VmRSS / VmHWM (the high-water mark: the
  peak over the process's life, which is why every configuration is measured
  in a fresh process);
* ``mapped_file_rss_mib(path)``: resident pages of the process's mappings of
  one file (an mmapped ``.pte`` pages in only what the run touched).
"""

from __future__ import annotations

import os
from pathlib import Path


def _status_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    return float("nan")


def rss_mib() -> float:
    return _status_kib("VmRSS") / 1024


def peak_rss_mib() -> float:
    return _status_kib("VmHWM") / 1024


def mapped_file_rss_mib(path: str | Path) -> float:
    """Sum of ``Rss`` over this process's mappings of ``path`` (0 when it is not mapped)."""
    target = os.path.realpath(path)
    total_kib = 0
    current = False
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split(maxsplit=5)
                if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
                    # a mapping header: "start-end perms offset dev inode [path]"
                    current = len(head) == 6 and os.path.realpath(head[5].strip()) == target
                elif current and head and head[0] == "Rss:":
                    total_kib += int(head[1])
    except OSError:
        return float("nan")
    return total_kib / 1024


MADV_DONTNEED = 4


def release_file_pages(path: str | Path) -> int:
    """Unlock memory and drop this process's resident pages of ``path``'s mappings; returns bytes released.

    ExecuTorch's Python runtime mlocks the mmapped program, so every constant
    is resident from load on whatever precision runs. After this call, pages
    come back only when the run touches them: the resident set a runtime
    that maps the file without mlock would have. Safe for read-only file
    mappings (the page cache still holds the data; access re-maps it).
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    if libc.munlockall() != 0:
        raise OSError(ctypes.get_errno(), "munlockall failed")
    target = os.path.realpath(path)
    released = 0
    with open("/proc/self/maps") as f:
        ranges = []
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and os.path.realpath(fields[5].strip()) == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                ranges.append((start, end))
    for start, end in ranges:
        if libc.madvise(start, end - start, MADV_DONTNEED) != 0:
            raise OSError(ctypes.get_errno(), f"madvise(MADV_DONTNEED) failed on {target}")
        released += end - start
    return released
