import hashlib
import json
import os
from pathlib import Path

import pytest

from otaro_export import integrity
from otaro_export.errors import IntegrityError


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OTARO_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 17])
def test_chunked_digest_is_sha256(tmp_path, monkeypatch, size):
    monkeypatch.setattr(integrity, "_CHUNK", 4096)  # chunk borders inside and at the end of the file
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    seen = []
    assert integrity.file_digest(tmp_path / "f", progress=seen.append) == hashlib.sha256(data).hexdigest()
    assert sum(seen) == size


def test_digest_without_fadvise(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "posix_fadvise", raising=False)
    (tmp_path / "f").write_bytes(b"abc")
    assert integrity.file_digest(tmp_path / "f") == hashlib.sha256(b"abc").hexdigest()


def _record(path):
    data = path.read_bytes()
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_check_file_uses_the_cache_only_for_an_unchanged_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"0123456789" * 100)
    record = _record(path)
    assert integrity.check_file(tmp_path, "w.bin", record) is False  # hashed
    assert integrity.check_file(tmp_path, "w.bin", record) is True  # answered by the cache
    st = path.stat()
    path.write_bytes(b"0123456789" * 99 + b"012345678X")  # same size...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ...and the old mtime: ctime still changes
    with pytest.raises(IntegrityError, match="is damaged"):
        integrity.check_file(tmp_path, "w.bin", record)


def test_cache_is_bounded_and_survives_garbage(tmp_path, monkeypatch):
    monkeypatch.setattr(integrity, "_CACHE_ENTRIES", 3)
    cache = integrity.cache_dir() / "verified-files.json"
    cache.parent.mkdir(parents=True)
    cache.write_text("not json")
    paths = []
    for i in range(5):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]))
        paths.append(p)
        integrity.remember([(p, hashlib.sha256(bytes([i])).hexdigest())])
    kept = json.loads(cache.read_text())
    assert sorted(kept) == sorted(os.path.realpath(p) for p in paths[2:])
    assert integrity.cached_digest(paths[0]) is None and integrity.cached_digest(paths[4]) is not None


def test_unwritable_cache_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("OTARO_CACHE_DIR", str(blocker / "cache"))  # under a file: mkdir fails
    (tmp_path / "w").write_bytes(b"x")
    record = _record(tmp_path / "w")
    assert integrity.check_file(tmp_path, "w", record) is False
    assert integrity.check_file(tmp_path, "w", record) is False  # nothing cached, still verified


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("OTARO_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert integrity.cache_dir() == tmp_path / "otaro-export"


def _peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) << 10


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's peak-RSS reset")
def test_hashing_keeps_the_file_out_of_memory(tmp_path, monkeypatch):
    """A 64 MiB file is hashed through one 8 MiB buffer: the PEAK resident memory while hashing grows by far
    less than the file, and every hashed range is handed back to the kernel (fadvise DONTNEED), so verifying
    at load does not make resident the weight pages that a low precision never reads."""
    path = tmp_path / "weights.bin"
    with open(path, "wb") as f:
        for _ in range(64):
            f.write(os.urandom(1 << 20))
    dropped = []
    real = os.posix_fadvise
    monkeypatch.setattr(
        os, "posix_fadvise", lambda fd, off, n, advice: (dropped.append((off, n, advice)), real(fd, off, n, advice))
    )
    integrity.file_digest(path)  # warm-up: the buffer itself
    dropped.clear()
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak to the current RSS
    before = _peak_rss()
    integrity.file_digest(path)
    assert _peak_rss() - before < 24 << 20
    ranges = [(off, n) for off, n, advice in dropped if advice == os.POSIX_FADV_DONTNEED]
    assert sum(n for _, n in ranges) == 64 << 20 and ranges[0][0] == 0
