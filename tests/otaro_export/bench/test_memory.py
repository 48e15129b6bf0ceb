import mmap

from otaro_export.bench import memory


def test_mapped_file_rss_counts_only_touched_pages_of_that_file(tmp_path):
    path = tmp_path / "weights.bin"
    page = mmap.PAGESIZE
    path.write_bytes(b"\x01" * (page * 64))
    assert memory.mapped_file_rss_mib(path) == 0.0  # not mapped yet
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            mm.madvise(mmap.MADV_RANDOM)  # no fault-around read-ahead: count exactly what we touch
            total = sum(mm[i * page] for i in range(8))  # touch 8 of 64 pages
            assert total == 8
            rss = memory.mapped_file_rss_mib(path)
            assert 8 * page / 2**20 <= rss <= 64 * page / 2**20
        finally:
            mm.close()


def test_process_rss_and_peak():
    assert 0 < memory.rss_mib() <= memory.peak_rss_mib()
