"""examples/native: the C++ demo runner on the project's kernel core, host and ARM64 (qemu)."""

from __future__ import annotations

import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

NATIVE = Path(__file__).resolve().parents[2] / "examples" / "native"
writer = runpy.run_path(str(NATIVE / "write_demo_model.py"))
TASKS = ["classify:3", "classify:3", "reply:8", "quiz:5"]


def build(tmp: Path, cxx: str) -> Path:
    if shutil.which(cxx) is None or shutil.which("make") is None:
        pytest.skip(f"{cxx} or make is not installed")
    out = tmp / "build"
    # -O1: these tests check results, not speed, and -O3 of the SIMD units takes 3x longer.
    subprocess.run(["make", "-s", "-j2", f"CXX={cxx}", f"BUILD={out}", "OPT=-O1"], cwd=NATIVE, check=True)
    return out / "sefp_demo"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("native") / "demo.sefpdemo"
    layers = writer["make_layers"](seed=0)
    inputs = writer["make_inputs"](layers[0].packed.in_features)
    plane_bytes = writer["write_demo_model"](path, layers, inputs)
    return path, layers, inputs, plane_bytes


@pytest.fixture(scope="module")
def host_binary(tmp_path_factory):
    return build(tmp_path_factory.mktemp("host"), os.environ.get("CXX", "g++"))


def run_tasks(cmd: list[str]) -> list[dict]:
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=300).stdout
    tasks = re.findall(r"task (\S+) E5M(\d) class (\d+) latency_ms \S+ resident_kib (-?\d+)\nlogits (.*)", out)
    return [
        {"name": n, "bits": int(b), "cls": int(c), "resident": int(r) * 1024, "logits": np.array(v.split(), np.float32)}
        for n, b, c, r, v in tasks
    ]


def check_against_reference(results, layers, inputs):
    for t, r in enumerate(results):
        ref = writer["reference_logits"](layers, inputs[t % len(inputs)], r["bits"])
        # The kernel and torch sum in float32 in different orders over K <= 2048 terms
        # per layer: the typical difference is ~sqrt(K) * 2^-24 ~ 3e-6 relative; 1e-4 of the
        # logit scale leaves a 30x margin yet is far below what a precision step changes.
        np.testing.assert_allclose(r["logits"], ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
        assert r["cls"] == int(np.argmax(ref))
        other = writer["reference_logits"](layers, inputs[t % len(inputs)], 8 if r["bits"] != 8 else 3)
        assert np.abs(other - ref).max() > 1e-2 * np.abs(ref).max(), "precision must change the result"


def test_host_runs_each_task_at_its_precision_from_one_mapping(model, host_binary):
    path, layers, inputs, plane_bytes = model
    results = run_tasks([str(host_binary), str(path), *TASKS])
    assert [(r["name"], r["bits"]) for r in results] == [("classify", 3), ("classify", 3), ("reply", 8), ("quiz", 5)]
    check_against_reference(results, layers, inputs)
    # Resident size of the one mapping: E5M3 tasks touch only p0 + exponents (plus the
    # page-sized bias/input/header blocks); the E5M8 task then touches every plane.
    after_m3, after_m8 = results[1]["resident"], results[2]["resident"]
    small_blocks = 64 * 1024 * 8
    assert after_m3 <= plane_bytes["p0"] + plane_bytes["exponents"] + small_blocks
    assert after_m8 >= sum(plane_bytes.values())


def test_out_of_range_bits_is_the_kernels_clear_error(model, host_binary):
    proc = subprocess.run([str(host_binary), str(model[0]), "bad:9"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "task 'bad': bits must be in 3..8" in proc.stderr


@pytest.mark.qemu
def test_arm64_build_under_qemu_matches_the_reference(model, tmp_path):
    if shutil.which("qemu-aarch64") is None:
        pytest.skip("qemu-aarch64 is not installed")
    binary = build(tmp_path, os.environ.get("OTARO_CROSS_CXX", "aarch64-linux-gnu-g++"))
    path, layers, inputs, _ = model
    results = run_tasks(["qemu-aarch64", str(binary), str(path), "classify:3", "reply:8", "quiz:5"])
    assert [r["bits"] for r in results] == [3, 8, 5]
    check_against_reference(results, layers, inputs)


@pytest.mark.qemu
def test_arm64_onnxruntime_op_library_builds_and_exports_its_entry_point(tmp_path):
    """The Makefile target the Android README uses for the fused kernels (here with glibc's cross g++)."""
    cxx, nm = "aarch64-linux-gnu-g++", "aarch64-linux-gnu-nm"
    if shutil.which(cxx) is None or shutil.which(nm) is None or shutil.which("make") is None:
        pytest.skip(f"{cxx}, {nm} or make is not installed")
    out = tmp_path / "build"
    subprocess.run(["make", "-s", "-j2", "ort-op-lib", f"CXX={cxx}", f"BUILD={out}", "OPT=-O1"], cwd=NATIVE, check=True)
    symbols = subprocess.run(
        [nm, "-D", "--defined-only", str(out / "libotaro_sefp_onnxruntime.so")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "RegisterCustomOps" in symbols
