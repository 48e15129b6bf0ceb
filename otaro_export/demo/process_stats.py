"""Resident memory of this process: the number that shows one weight copy serves every precision."""

from __future__ import annotations

from pathlib import Path


def resident_memory_bytes() -> int | None:
    """Current RSS in bytes (psutil, else /proc/self/status); None where neither is available."""
    try:
        import psutil
    except ModuleNotFoundError:
        psutil = None
    if psutil is not None:
        return int(psutil.Process().memory_info().rss)
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    return None


def format_mib(nbytes: int | None) -> str:
    return "n/a" if nbytes is None else f"{nbytes / 2**20:.1f}"
