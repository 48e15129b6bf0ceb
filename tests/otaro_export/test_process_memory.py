import mmap

from otaro_export import process_memory as pm


def test_mapped_file_rss_counts_only_touched_pages_of_that_file(tmp_path):
    path = tmp_path / "weights.bin"
    page = mmap.PAGESIZE
    path.write_bytes(b"\x01" * (page * 64))
    assert pm.mapped_file_rss_bytes(path) == 0  # not mapped yet
    assert pm.file_mappings(path) == []
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            mm.madvise(mmap.MADV_RANDOM)  # no fault-around read-ahead: count exactly what we touch
            total = sum(mm[i * page] for i in range(8))  # touch 8 of 64 pages
            assert total == 8
            rss = pm.mapped_file_rss_bytes(path)
            assert 8 * page <= rss <= 64 * page
            assert pm.mapped_file_rss_mib(path) == rss / 2**20
            (mapping,) = pm.file_mappings(path)
            assert mapping.size == 64 * page and mapping.perms.startswith("r") and "w" not in mapping.perms
            assert path.resolve() in pm.mapped_paths()
        finally:
            mm.close()
    assert pm.mapped_file_rss_bytes(path) == 0 and path.resolve() not in pm.mapped_paths()


def test_process_rss_peak_and_file_backed():
    assert 0 < pm.rss_bytes() <= pm.peak_rss_bytes()
    assert 0 < pm.rss_mib() <= pm.peak_rss_mib()
    # file-backed resident pages (the interpreter's own code at least) are part of RSS
    assert 0 < pm.file_rss_bytes() <= pm.rss_bytes()


def test_peak_is_a_high_water_mark():
    # An anonymous mapping, not a bytearray: whether malloc returns a freed block to the OS depends on the
    # allocator and its thresholds (in a long test process it may not), an unmapped mapping always is.
    block = mmap.mmap(-1, 64 * 2**20)
    for offset in range(0, len(block), mmap.PAGESIZE):
        block[offset] = 1  # touch every page
    grown = pm.rss_bytes()
    block.close()  # RSS falls, the peak must not
    assert pm.rss_bytes() < grown - 32 * 2**20
    assert pm.peak_rss_bytes() >= grown - 2**20


def test_format_mib():
    assert pm.format_mib(None) == "n/a"
    assert pm.format_mib(3 * 2**20 + 2**19) == "3.5"


def test_a_child_process_peak_is_its_own_not_its_parents():
    """The bench measures each configuration's peak in a fresh child: the parent's memory must not leak into it
    (Linux carries the parent's high-water mark into ru_maxrss across fork + exec)."""
    import subprocess
    import sys

    block = bytearray(256 * 2**20)
    block[:: mmap.PAGESIZE] = b"\x01" * len(block[:: mmap.PAGESIZE])  # the parent holds 256 MiB resident
    child = subprocess.run(
        [sys.executable, "-c", "from otaro_export import process_memory as p; print(p.peak_rss_bytes())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(child.stdout) < 200 * 2**20  # a bare interpreter + psutil: tens of MiB
    del block
