"""File digests of an exported artifact: recorded at export, checked at load and by ``otaro verify``.

The manifest's ``files`` field (docs/FORMAT.md §7) maps each file of the
artifact (model, weight data, tokenizer files) to its size and SHA-256. A load
checks every recorded file before any byte reaches a runtime, so a damaged or
swapped file is a clean :class:`IntegrityError`, never NaN logits or a quietly
changed answer.

Hashing must not undo the memory goal (a session touches only the weight
planes its precision reads), so:

* files are read in chunks into one reused buffer (never mapped) and each
  hashed chunk is dropped from the page cache (``posix_fadvise DONTNEED``);
* a verified digest is cached per file, keyed by (path, size, mtime, ctime,
  inode, device), in ``$OTARO_CACHE_DIR`` or ``~/.cache/otaro-export``: a later
  load of an unchanged file costs one ``stat``. Any write to the file changes
  its ctime, which the user cannot set, so a stale entry is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path

from otaro_export.errors import IntegrityError

DIGEST = "sha256"
_CHUNK = 8 << 20
_CACHE_FILE = "verified-files.json"
_CACHE_ENTRIES = 512  # oldest entries go first: a bounded file, whatever is loaded over the years
_cache_lock = threading.Lock()


def cache_dir() -> Path:
    if os.environ.get("OTARO_CACHE_DIR"):
        return Path(os.environ["OTARO_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otaro-export"


def file_digest(path: str | Path, drop_pages: bool = True, progress: Callable[[int], None] | None = None) -> str:
    """SHA-256 of ``path``, read in chunks; with ``drop_pages`` each chunk leaves the page cache once hashed."""
    h = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    fadvise = getattr(os, "posix_fadvise", None) if drop_pages else None
    with open(path, "rb", buffering=0) as f:
        offset = 0
        while n := f.readinto(view):
            h.update(view[:n])
            if fadvise is not None:
                try:
                    fadvise(f.fileno(), offset, n, os.POSIX_FADV_DONTNEED)
                except OSError:
                    fadvise = None  # a filesystem without fadvise: hashing still works
            offset += n
            if progress is not None:
                progress(n)
    return h.hexdigest()


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _read_cache() -> dict:
    try:
        data = json.loads((cache_dir() / _CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_digest(path: Path) -> str | None:
    """The digest recorded for ``path`` if the file is unchanged since it was verified, else None."""
    try:
        key = _stat_key(os.stat(path))
    except OSError:
        return None
    entry = _read_cache().get(os.path.realpath(path))
    if isinstance(entry, dict) and entry.get("stat") == key and isinstance(entry.get(DIGEST), str):
        return entry[DIGEST]
    return None


def remember(paths_digests: Iterable[tuple[Path, str]]) -> None:
    """Record verified digests (best effort: an unwritable cache only costs a re-hash next time)."""
    with _cache_lock:
        data = _read_cache()
        for path, digest in paths_digests:
            try:
                key = _stat_key(os.stat(path))
            except OSError:
                continue
            real = os.path.realpath(path)
            data.pop(real, None)  # re-insert: dict order is the eviction order
            data[real] = {"stat": key, DIGEST: digest}
        while len(data) > _CACHE_ENTRIES:
            data.pop(next(iter(data)))
        directory = cache_dir()
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".verified-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, directory / _CACHE_FILE)  # atomic: concurrent loads never read half a file
        except OSError:
            pass


def describe(path: Path) -> dict:
    """The manifest record of one file: ``{"size": bytes, "sha256": hex}``."""
    return {"size": path.stat().st_size, DIGEST: file_digest(path)}


def check_file(
    directory: Path, name: str, record: dict, use_cache: bool = True, progress: Callable[[int], None] | None = None
) -> bool:
    """Raise :class:`IntegrityError` unless ``directory/name`` matches ``record``; True if the cache answered."""
    path = Path(directory) / name
    if not path.is_file():
        raise IntegrityError(f"{path} is missing (the manifest records it): re-export the artifact")
    size = path.stat().st_size
    if size != record["size"]:
        raise IntegrityError(
            f"{path} has {size} bytes, the manifest records {record['size']}: the file is truncated or "
            "replaced; re-export the artifact or copy it again"
        )
    if use_cache and cached_digest(path) == record[DIGEST]:
        return True
    digest = file_digest(path, progress=progress)
    if digest != record[DIGEST]:
        raise IntegrityError(
            f"{path} is damaged: its {DIGEST} differs from the one recorded at export; re-export the "
            "artifact or copy it again"
        )
    remember([(path, digest)])
    return False
