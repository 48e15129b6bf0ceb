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


def status_mib(field: str) -> float:
    """One size field of /proc/self/status in MiB (VmRSS, VmHWM, RssFile, ...); NaN if absent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024
    return float("nan")


def rss_mib() -> float:
    return status_mib("VmRSS")


def peak_rss_mib() -> float:
    return status_mib("VmHWM")


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
