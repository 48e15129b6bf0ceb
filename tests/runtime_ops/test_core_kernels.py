"""Every compiled x86 code path of the kernel core equals the torch reference ops.

Every reconstruction rule (floor, center, a fitted-like table, a generic table;
sefp_kernel_cases.level_tables) at every precision, every ISA, every shape.
Tolerances are justified in sefp_kernel_cases.py (exact cases: bit-for-bit;
float cases: the float32 summation-order bound; embedding rows: bit-for-bit).
ARM64 NEON: test_neon_qemu.py.
"""

from __future__ import annotations

import pytest
import torch
from sefp_kernel_cases import (
    BITS,
    RULES,
    SHAPES,
    U,
    embedding_reference,
    exact_problem,
    float_problem,
    level_tables,
    reference,
    summation_tolerance,
)

from otaro_export import activation_quant as aq
from otaro_export import sefp
from otaro_export.errors import InvalidBitsError
from otaro_export.runtime_ops.core_ctypes import CoreKernels

X86_ISAS = ["scalar", "avx2", "avx512"]


@pytest.fixture(scope="module")
def kernels() -> CoreKernels:
    return CoreKernels.load()


def _require(kernels: CoreKernels, isa: str) -> None:
    if not kernels.isa_available(isa):
        pytest.skip(f"{isa} is not compiled in or not supported by this CPU ({kernels.available_isas()})")


@pytest.fixture(scope="module")
def exact_cases():
    """rule -> [(label, x, packed, bits, bias, levels, torch reference)] for every shape and precision."""
    cases = {}
    for rule, levels in level_tables().items():
        cases[rule] = []
        for i, (n, k, rows) in enumerate(SHAPES):
            x, packed, bias = exact_problem(n, k, rows, seed=i)
            for bits in BITS:
                want = reference(x, packed, bits, bias, levels)
                cases[rule].append((f"{rule} N={n} K={k} rows={rows} bits={bits}", x, packed, bits, bias, levels, want))
    return cases


@pytest.fixture(scope="module")
def float_cases():
    """As exact_cases, plus the per-element summation-order tolerance; with and without bias."""
    cases = {}
    for rule, levels in level_tables(seed=1).items():
        cases[rule] = []
        for i, (n, k, rows) in enumerate(SHAPES):
            x, packed, bias = float_problem(n, k, rows, seed=100 + i)
            for bits in BITS:
                b = bias if bits % 2 else None
                label = f"{rule} N={n} K={k} rows={rows} bits={bits} bias={b is not None}"
                want = reference(x, packed, bits, b, levels)
                tol = summation_tolerance(x, packed, bits, b, levels)
                cases[rule].append((label, x, packed, bits, b, levels, want, tol))
    return cases


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("isa", X86_ISAS)
def test_exact_cases_equal_reference_bit_for_bit(kernels, exact_cases, isa, rule):
    _require(kernels, isa)
    for label, x, packed, bits, bias, levels, want in exact_cases[rule]:
        got = kernels.linear(x, packed, bits, bias, levels=levels, isa=isa, num_threads=2)
        assert torch.equal(got, want), f"{isa} {label}"


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("isa", X86_ISAS)
def test_float_cases_within_summation_bound(kernels, float_cases, isa, rule):
    _require(kernels, isa)
    for label, x, packed, bits, bias, levels, want, tol in float_cases[rule]:
        got = kernels.linear(x, packed, bits, bias, levels=levels, isa=isa, num_threads=2)
        err = (got.double() - want.double()).abs()
        assert bool((err <= tol).all()), f"{isa} {label}: max err {err.max():.3g}"


def test_rules_really_differ(kernels):
    """The tables reach the kernels: each rule gives its own result at every precision."""
    x, packed, bias = float_problem(40, 200, 1, seed=9)
    for bits in BITS:
        outs = [kernels.linear(x, packed, bits, bias, levels=levels) for levels in level_tables().values()]
        for i in range(len(outs)):
            for j in range(i + 1, len(outs)):
                same_rows = bits >= 5 and {i, j} == {1, 2}  # fitted keeps center's rows for k >= 5
                assert torch.equal(outs[i], outs[j]) == same_rows, (bits, i, j)


def test_floor_table_equals_no_table(kernels):
    """A table equal to floor takes the floor path: same bits as levels=None."""
    x, packed, bias = float_problem(50, 300, 3, seed=4)
    for bits in BITS:
        assert torch.equal(
            kernels.linear(x, packed, bits, bias, levels=sefp.floor_levels()), kernels.linear(x, packed, bits, bias)
        )


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("isa", X86_ISAS)
def test_embedding_rows_equal_reference_bit_for_bit(kernels, isa, rule):
    _require(kernels, isa)
    levels = level_tables(seed=2)[rule]
    gen = torch.Generator().manual_seed(3)
    for n, k in ((37, 100), (64, 64), (19, 1000), (300, 129)):
        _, packed, _ = float_problem(n, k, 1, seed=n)
        ids = torch.randint(0, n, (3, 5), generator=gen)
        ids[0, 0], ids[0, 1] = 0, n - 1  # both ends of the table
        for bits in BITS:
            got = kernels.embedding(ids, packed, bits, levels=levels, isa=isa, num_threads=2)
            assert got.shape == (3, 5, k)
            assert torch.equal(got, embedding_reference(ids, packed, bits, levels)), f"{isa} {rule} {n}x{k} {bits}"


@pytest.mark.parametrize("bad", [-1, 37, 2**40])
def test_embedding_ids_out_of_range_are_an_error(kernels, bad):
    _, packed, _ = float_problem(37, 100, 1, seed=0)
    with pytest.raises(IndexError, match=rf"id {bad} at position 2 is outside \[0, 37\)"):
        kernels.embedding(torch.tensor([0, 5, bad, 3]), packed, 4)


def test_embedding_of_no_ids_is_empty(kernels):
    _, packed, _ = float_problem(37, 100, 1, seed=0)
    assert kernels.embedding(torch.zeros(0, dtype=torch.int64), packed, 4).shape == (0, 100)


def test_bad_levels_are_an_error_for_the_precision_that_reads_them(kernels):
    x, packed, _ = exact_problem(8, 64, 1, seed=0)
    levels = sefp.center_levels()
    levels[1, 5] = float("nan")  # E5M4 row
    with pytest.raises(ValueError, match="finite and >= 0"):
        kernels.linear(x, packed, 4, levels=levels)
    with pytest.raises(ValueError, match="finite and >= 0"):
        kernels.embedding(torch.tensor([1]), packed, 4, levels=levels)
    kernels.linear(x, packed, 5, levels=levels)  # another row: fine
    with pytest.raises(ValueError, match=r"float32 \[6, 256\]"):
        kernels.linear(x, packed, 4, levels=levels[:5])


def test_auto_picks_an_available_isa(kernels):
    assert kernels.best_isa() in kernels.available_isas()
    assert kernels.isa_available("scalar")


def test_leading_batch_dims_are_rows(kernels):
    x, packed, bias = exact_problem(40, 130, 6, seed=7)
    x3 = x.reshape(2, 3, 130)
    got = kernels.linear(x3, packed, 5, bias)
    assert got.shape == (2, 3, 40)
    assert torch.equal(got, reference(x3, packed, 5, bias))


def test_thread_count_does_not_change_results(kernels):
    # threads split output rows; each output's summation order is fixed
    x, packed, bias = float_problem(300, 1000, 5, seed=3)
    for rows in (1, 5):
        runs = [kernels.linear(x[:rows], packed, 6, bias, num_threads=t) for t in (1, 2, 3, 8)]
        assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_range_call_writes_only_its_columns(kernels):
    x, packed, bias = exact_problem(70, 200, 3, seed=11)
    want = reference(x, packed, 4, bias)
    out = torch.full((3, 80), -7.0)  # ldy 80 > N 70
    kernels.linear_range(x, packed, 4, out, 16, 50, bias)
    assert torch.equal(out[:, 16:50], want[:, 16:50])
    assert bool((out[:, :16] == -7).all()) and bool((out[:, 50:] == -7).all())
    with pytest.raises(ValueError, match="shape"):
        kernels.linear_range(x, packed, 4, out, 60, 71, bias)  # past N


@pytest.mark.parametrize("bits", [-1, 0, 2, 9, 16])
def test_bits_outside_3_to_8_is_an_error(kernels, bits):
    x, packed, _ = exact_problem(8, 64, 1, seed=0)
    with pytest.raises(InvalidBitsError, match="3..8"):
        kernels.linear(x, packed, bits)


def test_shape_mismatch_is_an_error_not_a_crash(kernels):
    x, packed, _ = exact_problem(8, 100, 2, seed=0)  # 2 groups: accepts K in 65..128
    for k in (64, 129):
        with pytest.raises(ValueError, match="shape mismatch"):
            kernels.linear(torch.zeros(2, k), packed, 4)


def test_unsupported_isa_is_an_error(kernels):
    x, packed, _ = exact_problem(8, 64, 1, seed=0)
    missing = [isa for isa in ("avx2", "avx512", "neon") if not kernels.isa_available(isa)]
    for isa in missing:
        with pytest.raises(ValueError, match="not supported"):
            kernels.linear(x, packed, 4, isa=isa)
    with pytest.raises(ValueError, match="unknown isa"):
        kernels.linear(x, packed, 4, isa="sse9")


def test_concurrent_callers_share_the_pool_safely(kernels, exact_cases):
    # ctypes releases the GIL: four Python threads call the kernel at once; a call
    # that finds the pool busy runs on its own thread. Results must stay exact.
    from concurrent.futures import ThreadPoolExecutor

    picked = [c for rule in RULES for c in exact_cases[rule] if c[1].shape[0] in (1, 16)][::10]

    def run(case):
        label, x, packed, bits, bias, levels, want = case
        for _ in range(10):
            got = kernels.linear(x, packed, bits, bias, levels=levels, num_threads=2)
            if not torch.equal(got, want):
                return label
        return None

    with ThreadPoolExecutor(max_workers=4) as pool:
        failures = [r for r in pool.map(run, picked * 2) if r is not None]
    assert not failures


# ---- int8 activations (docs/FORMAT.md §9) ----


def _int8_tables():
    """floor (integers), fitted (k <= 4 not: the float kernels on fq(x); k >= 5 center, integers),
    fitted and generic (every row random) rounded to integers."""
    tables = level_tables(seed=1)
    return {
        "floor": tables["floor"],
        "fitted": tables["fitted"],
        "fitted-integer": aq.round_levels_to_int8_grid(tables["fitted"], 8),
        "generic-integer": aq.round_levels_to_int8_grid(tables["generic"], 8),
    }


@pytest.mark.parametrize("isa", X86_ISAS)
def test_int8_activations_equal_reference_within_summation_bound(kernels, isa):
    """fq(x) @ W_k^T at bits <= 6, x @ W_k^T above, for integer and other levels at every shape.

    On an AVX-512 VNNI machine the avx512 cases with integer levels (floor, center, *-integer) and
    at most 3 rows run the integer kernel at E5M3/E5M4, and with VBMI at E5M5/E5M6 too (K <= 4096;
    K 4200 runs the float kernel on fq(x) there); the others the float kernels on fq(x). Tolerance:
    the reference rounds each fq(x)_i = q_i * step once more than the kernel (which sums q_i * |L|
    exactly), so both lie within gamma_{K+2} sum |fq(x)_i w_i| of the exact value.
    """
    _require(kernels, isa)
    tables = _int8_tables()
    # + the longest rows whose groups the VNNI kernel takes in pairs (K 4096), longer ones, and odd
    # group counts (7, 5) at 1 and 2 rows
    for i, (n, k, rows) in enumerate([*SHAPES, (24, 4096, 2), (20, 4200, 1), (41, 420, 1), (22, 300, 2)]):
        x, packed, bias = float_problem(n, k, rows, seed=200 + i)
        x[0, 0] = 9.0  # one large activation: its block's scale only
        weight = packed.unpack()  # once per shape (unpacking is the slow part of the reference)
        for rule, levels in tables.items():
            for bits in (3, 4, 5, 6, 7):  # 7: above max_bits, plain x
                b = bias if bits % 2 else None
                xq = aq.fake_quantize(x) if bits <= 6 else x
                w = weight.dequantize(bits, levels)
                want = torch.nn.functional.linear(xq, w, b)
                mag = xq.abs().double() @ w.abs().double().T + (b.abs().double() if b is not None else 0)
                tol = 2 * (k + 2) * U / (1 - (k + 2) * U) * mag  # 2 gamma_{K+2}, as summation_tolerance
                got = kernels.linear(x, packed, bits, b, levels=levels, isa=isa, num_threads=2, act_int8_max_bits=6)
                err = (got.double() - want.double()).abs()
                assert bool((err <= tol).all()), f"{isa} {rule} N={n} K={k} rows={rows} bits={bits}: {err.max():.3g}"


def test_int8_activations_change_the_result_only_where_they_apply(kernels):
    x, packed, bias = float_problem(64, 300, 1, seed=5)
    for bits in BITS:
        plain = kernels.linear(x, packed, bits, bias)
        for max_bits in (3, 5, 8):
            got = kernels.linear(x, packed, bits, bias, act_int8_max_bits=max_bits)
            assert torch.equal(got, plain) == (bits > max_bits), (bits, max_bits)


@pytest.mark.parametrize("bits", [3, 5, 6])
def test_int8_range_call_equals_the_whole_call(kernels, bits):
    x, packed, bias = float_problem(70, 200, 2, seed=12)
    want = kernels.linear(x, packed, bits, bias, act_int8_max_bits=6)
    out = torch.full((2, 70), -7.0)
    kernels.linear_range(x, packed, bits, out, 16, 48, bias, act_int8_max_bits=6)
    assert torch.equal(out[:, 16:48], want[:, 16:48]) and bool((out[:, :16] == -7).all())


def test_int8_non_finite_activations_propagate_like_the_reference(kernels):
    x, packed, _ = float_problem(16, 256, 1, seed=6)
    x[0, 3] = float("inf")  # block 0 kept as is; the integer kernel cannot carry it, so the float path runs
    x[0, 200] = float("nan")
    want = reference(aq.fake_quantize(x), packed, 3, None)
    got = kernels.linear(x, packed, 3, act_int8_max_bits=4)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())


@pytest.mark.parametrize("bad", [-1, 1, 2, 9])
def test_int8_max_bits_outside_0_and_3_to_8_is_an_error(kernels, bad):
    x, packed, _ = exact_problem(8, 64, 1, seed=0)
    with pytest.raises(ValueError, match="act_int8_max_bits must be 0"):
        kernels.linear(x, packed, 4, act_int8_max_bits=bad)


def test_int8_kernel_is_used_where_the_cpu_has_it(kernels):
    """The integer kernel is not silently off on a CPU with AVX-512 VNNI (nor claimed on one without)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        pytest.skip("no /proc/cpuinfo flags")
    wanted = {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
    has_vnni = wanted.issubset(flags)
    has_vbmi = has_vnni and "avx512vbmi" in flags  # + the paired E5M3..E5M6 integer path
    assert (kernels.int8_kernel_name("avx512") == "avx512-vnni") == has_vnni
    assert kernels.int8_kernel_name("scalar") == "none"
    assert kernels.int8_kernel_max_bits("scalar") == 0
    if kernels.isa_available("avx2"):
        assert kernels.int8_kernel_name("avx2") == "avx2"
        assert kernels.int8_kernel_max_bits("avx2") == 4
    if kernels.isa_available("avx512"):
        assert kernels.int8_kernel_name("avx512") == ("avx512-vnni" if has_vnni else "avx2")
        assert kernels.int8_kernel_max_bits("avx512") == (6 if has_vbmi else 4)


def test_vnni_only_int8_kernels_equal_reference_on_a_vbmi_machine(kernels):
    """$OTARO_NO_VBMI=1 runs the kernels a VNNI-only CPU (Cascade Lake) gets: E5M3/E5M4 in the VNNI unit.

    A VBMI machine otherwise never runs them (E5M3..E5M6 go to the VBMI unit), so the int8 reference test
    runs again in a fresh process (the switch is read once) with the switch set.
    """
    if kernels.int8_kernel_max_bits("avx512") != 6:
        pytest.skip("needs AVX-512 VNNI + VBMI (without VBMI the main run already tests the VNNI kernels)")
    import os
    import subprocess
    import sys
    from pathlib import Path

    probe = "from otaro_export.runtime_ops.core_ctypes import CoreKernels; print(CoreKernels.load().int8_kernel_max_bits('avx512'))"
    env = {**os.environ, "OTARO_NO_VBMI": "1"}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "4", out.stdout + out.stderr  # the switch takes effect
    test = f"{Path(__file__)}::test_int8_activations_equal_reference_within_summation_bound[avx512]"
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
        env=env,
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
