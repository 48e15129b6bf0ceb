import os

import pytest
import torch

# Tests are sized for 2 cores; more threads only add contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def _verified_files_cache(tmp_path_factory):
    # runtime.load caches verified file digests; tests keep that cache out of the user's home
    os.environ["OTARO_CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "otaro-cache")


@pytest.fixture
def rng():
    return torch.Generator().manual_seed(0)
