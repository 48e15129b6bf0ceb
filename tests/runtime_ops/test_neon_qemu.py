"""ARM64: the kernel core (scalar + NEON) cross-compiled and run under qemu-aarch64.

The C++ driver (runtime_ops/csrc/tests/sefp_kernel_tests.cc) reads problems and
torch reference outputs written here (linear calls and embedding gathers, every
reconstruction rule at every precision), checks every ISA it has at 1 and 2
threads, then its error paths. Tolerances: see sefp_kernel_cases.py.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import torch
from sefp_kernel_cases import (
    BITS,
    embedding_reference,
    exact_problem,
    float_problem,
    level_tables,
    reference,
    summation_tolerance,
    write_case,
)

from otaro_export.runtime_ops import build

pytestmark = pytest.mark.qemu

QEMU = shutil.which("qemu-aarch64")
CROSS = shutil.which("aarch64-linux-gnu-g++")
# a subset of SHAPES keeps qemu time low; still covers K % 64 != 0, matvec rows 1..3 and the GEMM path
QEMU_SHAPES = [(37, 100, 1), (19, 1000, 2), (50, 300, 3), (33, 200, 7), (130, 577, 1)]


@pytest.fixture(scope="module")
def arm_binary():
    if CROSS is None:
        pytest.skip("aarch64-linux-gnu-g++ not found (Debian: apt-get install g++-aarch64-linux-gnu)")
    if QEMU is None:
        pytest.skip("qemu-aarch64 not found (Debian: apt-get install qemu-user)")
    return build.build_aarch64_tests()


def test_neon_and_scalar_match_torch_reference_under_qemu(arm_binary, tmp_path):
    files = []
    for rule, levels in level_tables().items():
        for i, (n, k, rows) in enumerate(QEMU_SHAPES):
            exact = exact_problem(n, k, rows, seed=i)
            flt = float_problem(n, k, rows, seed=50 + i)
            ids = torch.randint(0, n, (7,), generator=torch.Generator().manual_seed(i))
            for bits in BITS:
                x, packed, bias = exact
                path = tmp_path / f"exact_{rule}_{i}_{bits}.bin"
                want = reference(x, packed, bits, bias, levels)
                write_case(path, x, packed, bits, bias, want, [0.0] * (rows * n), levels)
                x, packed, bias = flt
                path2 = tmp_path / f"float_{rule}_{i}_{bits}.bin"
                tol = summation_tolerance(x, packed, bits, bias, levels).numpy()
                write_case(path2, x, packed, bits, bias, reference(x, packed, bits, bias, levels), tol, levels)
                path3 = tmp_path / f"embedding_{rule}_{i}_{bits}.bin"
                rows_ref = embedding_reference(ids, packed, bits, levels)
                write_case(path3, None, packed, bits, None, rows_ref, [0.0] * rows_ref.numel(), levels, ids)
                files += [path, path2, path3]
    proc = subprocess.run([QEMU, str(arm_binary), *map(str, files)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "best isa: neon" in out
    lines = out.splitlines()
    for isa in ("scalar", "neon"):
        # every case at 1 and 2 threads
        assert sum(line.startswith(f"PASS {isa} ") for line in lines) == 2 * len(files), out[-2000:]
    assert "0 failure(s)" in out


def test_int8_activations_under_qemu(arm_binary, tmp_path):
    """act_int8_max_bits = 4 (docs/FORMAT.md §9) on ARM64: the SDOT kernel (qemu's CPU has the dot product)
    and the scalar float path on fq(x), for levels on and off the int8 grid; tolerance as on x86
    (test_core_kernels.test_int8_activations_equal_reference_within_summation_bound)."""
    from otaro_export import activation_quant as aq

    tables = level_tables()
    tables = {
        "floor": None,
        "fitted-grid": aq.round_levels_to_int8_grid(tables["fitted"], 8),
        "fitted": tables["fitted"],
    }
    files = []
    for rule, levels in tables.items():
        for i, (n, k, rows) in enumerate(QEMU_SHAPES):
            x, packed, bias = float_problem(n, k, rows, seed=70 + i)
            for bits in (3, 4, 5):
                xq = aq.fake_quantize(x) if bits <= 4 else x
                path = tmp_path / f"int8_{rule}_{i}_{bits}.bin"
                want = reference(xq, packed, bits, bias, levels)
                tol = summation_tolerance(xq, packed, bits, bias, levels).numpy()
                write_case(path, x, packed, bits, bias, want, tol, levels, act_int8_max_bits=4)
                files.append(path)
    proc = subprocess.run([QEMU, str(arm_binary), *map(str, files)], capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "int8 kernel: neon-sdot" in out  # the SDOT kernel ran, not only the float path on fq(x)
    lines = out.splitlines()
    for isa in ("scalar", "neon"):
        assert sum(line.startswith(f"PASS {isa} ") and " int8" in line for line in lines) == 2 * len(files), out[-2000:]
