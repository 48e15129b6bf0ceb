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


def test_release_file_pages_drops_the_mapping_until_touched_again(tmp_path):
    path = tmp_path / "weights.bin"
    page = mmap.PAGESIZE
    path.write_bytes(b"\x02" * (page * 64))
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            assert sum(mm[i * page] for i in range(64)) == 128
            assert memory.mapped_file_rss_mib(path) == 64 * page / 2**20
            assert memory.release_file_pages(path) >= 64 * page
            assert memory.mapped_file_rss_mib(path) == 0.0
            assert mm[5 * page] == 2  # data intact: re-read from the page cache
            assert 0 < memory.mapped_file_rss_mib(path) <= 64 * page / 2**20
        finally:
            mm.close()
