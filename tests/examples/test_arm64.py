"""examples/arm64: exported artifacts in onnxruntime's and ExecuTorch's own aarch64 builds, under qemu-user.

Each test exports a tiny random model, runs it on aarch64 (an arm64 Debian userland + the runtimes' aarch64
wheels + the project's kernel libraries cross-built for NEON) and on x86, and checks the logits at every
precision against each other and against the torch reference (exact SEFP dequant). The first run
downloads the userland and wheels (about 75 MB) into ~/.cache/otaro-export/arm64; where qemu, the cross
compiler, Debian's mirror or PyPI cannot be had, the tests skip and say which.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
ARM64 = REPO / "examples" / "arm64"


def _load_check():
    spec = importlib.util.spec_from_file_location("arm64_check", ARM64 / "arm64_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


check = _load_check()
DEMO_MAX_SEQ_LEN = 256  # the demo's prompts are <= 190 byte-level tokens with the chat template


def _onnx_reference(directory, model):
    """The torch reference of an ONNX export: its own stored bits (and levels, floors) dequantized by the spec."""
    import torch

    from otaro_export.export.onnx_reference import reference_decoder, reference_logits

    return lambda ids, bits: reference_logits(reference_decoder(directory, model, bits), torch.from_numpy(ids)).numpy()


def _pte_reference(directory, loaded):
    """The torch reference of a .pte export: its own stored bits (and floors) dequantized by the spec."""
    import torch

    from otaro_export.export.executorch_reference import reference_decoder
    from otaro_export.export.onnx_reference import reference_logits

    def forward(ids, bits):
        decoder = reference_decoder(directory, loaded.model, bits, loaded.tokenizer)
        return reference_logits(decoder, torch.from_numpy(ids)).numpy()

    return forward


@pytest.fixture(scope="module")
def userland():
    try:
        return check.prepare_userland(executorch=True, log=lambda _: None)
    except check.Arm64Unavailable as exc:
        pytest.skip(f"the ARM64 check cannot run here: {exc}")


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.testing import tiny_causal_lm

    out = tmp_path_factory.mktemp("arm64_onnx")
    options = ExportOptions(target="onnx", output=out, max_seq_len=DEMO_MAX_SEQ_LEN)
    export_model(options, log=lambda _: None, loaded=tiny_causal_lm())
    return out


def _assert_precision_matters(logits: dict[int, np.ndarray]) -> None:
    # a run that ignored `bits` (or returned zeros) would pass every closeness check: rule it out
    assert check.relative_difference(logits[3], logits[8]) > 1e-2


@pytest.mark.arm64
def test_onnx_on_arm64_matches_x86_and_torch(userland, onnx_artifact):
    from otaro_export.testing import tiny_causal_lm

    reference = _onnx_reference(onnx_artifact, tiny_causal_lm().model)
    report = check.check(onnx_artifact, tasks=False, reference=reference, log=lambda _: None)
    text = report.format()
    assert report.ok, text
    titles = [c.title for c in report.columns]
    assert titles == ["arm64 fused vs x86", "arm64 stock vs x86", "x86 vs torch", "arm64 fused vs torch"], text
    for column in report.columns:
        assert sorted(column.diffs) == [3, 4, 5, 6, 7, 8]
        assert all(d <= check.TOLERANCE for d in column.diffs.values()), text
    _assert_precision_matters(report.logits["arm64 fused"])
    _assert_precision_matters(report.logits["torch"])
    # the fused kernels on aarch64 and stock onnxruntime's function bodies both refuse E5M9
    assert any("arm64 fused: rejected" in n and "bits must be" in n for n in report.notes), text
    assert any("arm64 stock: rejected" in n for n in report.notes), text


@pytest.mark.arm64
@pytest.mark.parametrize(
    ("kernels", "attention"),
    [
        ("fused", "llm-ops"),  # the default export: attention is the project's otaro_llm::kv_attention kernel
        ("fused", "portable"),
        ("portable", "portable"),  # the stock runtime alone, no project library
    ],
)
def test_pte_on_arm64_matches_x86_and_torch(userland, tmp_path_factory, kernels, attention):
    if userland.executorch is None:
        pytest.skip(f"no ExecuTorch aarch64 runtime: {userland.versions.get('executorch_unavailable')}")
    from otaro_export.manifest import Manifest
    from otaro_export.testing import tiny_executorch_artifact

    # standard ops or the project's kernels only, so the stock aarch64 runtime (+ the project's library) runs it
    directory, loaded = tiny_executorch_artifact(
        tmp_path_factory.mktemp("arm64_pte"), kernels=kernels, attention=attention
    )
    extra = Manifest.load(directory).extra
    assert extra["attention"] == attention and extra["runtime_ops"] == [], extra
    try:
        report = check.check(directory, reference=_pte_reference(directory, loaded), log=lambda _: None)
    except check.Arm64Unavailable as exc:  # a tool or package this machine cannot have (never a missing kernel)
        pytest.skip(f"the ARM64 check cannot run this .pte here: {exc}")
    text = report.format()
    assert report.ok, text
    assert [c.title for c in report.columns] == ["arm64 vs x86", "x86 vs torch", "arm64 vs torch"], text
    assert sorted(report.columns[0].diffs) == [3, 4, 5, 6, 7, 8]
    _assert_precision_matters(report.logits["arm64"])
    rejected = [n for n in report.notes if n.startswith("bits=9, arm64: rejected")]
    # the fused kernel names the check; the portable decomposition's check fails the call with an error code
    assert rejected and ("bits must be" in rejected[0] or kernels == "portable"), text


@pytest.mark.arm64
def test_run_sh_prints_the_difference_from_x86_and_runs_the_demo_tasks(userland, onnx_artifact):
    proc = subprocess.run(
        [str(ARM64 / "run.sh"), str(onnx_artifact), "--bits", "3,E5M8"],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHON": sys.executable},
    )
    out = proc.stdout
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("E5M")]
    assert [r[0] for r in rows] == ["E5M3", "E5M8"], out + proc.stderr[-3000:]
    assert all(float(cell.rstrip("*")) <= check.TOLERANCE for r in rows for cell in r[1:]), out
    # the demo's task flow (policy + tasks, through the apps' engine) ran on aarch64 with x86's answers
    tasks = [line.strip() for line in out.splitlines() if line.strip().startswith("demo tasks")]
    assert len(tasks) == 1 and "answers equal to x86" in tasks[0], out
    done, total = tasks[0].split(": ", 1)[1].split(" ", 1)[0].split("/")
    assert done == total and int(total) >= 4, out
    assert proc.returncode == 0 and "result: PASS" in out, out


# -- no qemu needed ------------------------------------------------------------------------------------------


def test_report_flags_a_difference_beyond_the_tolerance():
    x86 = {3: np.linspace(-4, 4, 24, dtype=np.float32).reshape(3, 8)}
    report = check.Report(Path("a"), "onnx", "fused", "env", 3)
    report.add("same", {3: x86[3] + 1e-7}, x86)
    assert report.ok
    off = x86[3].copy()
    off[2, 5] += 0.01  # 0.01 / 4 = 2.5e-3 of the logit scale
    report.add("off", {3: off}, x86)
    assert not report.ok and "off at E5M3: 2.50e-03" in report.failures[0]
    assert "FAIL" in report.format()


def test_a_pte_missing_only_the_llm_custom_ops_cannot_run_here_and_says_which():
    log = (
        "E executorch:method.cpp:822] Missing operator: [15] llama::update_cache.out\n"
        "E executorch:method.cpp:822] Missing operator: [16] llama::custom_sdpa.out\n"
    )
    with pytest.raises(check.Arm64Unavailable, match=r"llama::custom_sdpa.out, llama::update_cache.out\), which"):
        check._raise_if_llm_ops_missing(log)
    # any other missing kernel (the project's own, say) is a failure of the check, not a reason to skip
    check._raise_if_llm_ops_missing(log + "E executorch:method.cpp:822] Missing operator: [3] otaro::sefp_linear.out\n")
    check._raise_if_llm_ops_missing("error: cannot load method forward")


def test_calls_file_keeps_zero_dim_inputs(tmp_path):
    """The replay file for pte_runner: a 0-dim ``bits`` must stay 0-dim (the runtime rejects a rank change)."""
    import struct

    check.write_pte_calls(tmp_path / "c.bin", [("forward", [np.array([[5, 6]], np.int64), np.array(4, np.int64), 7])])
    data = (tmp_path / "c.bin").read_bytes()
    assert data[:4] == b"OTRC" and struct.unpack_from("<III", data, 4) == (1, 1, 7) and data[16:23] == b"forward"
    assert struct.unpack_from("<I", data, 23) == (3,)
    # int64 [1, 2]; then int64 with ndim 0 and one value; then a Python int as an int64 scalar (dtype 4)
    assert data[27:29] == bytes([1, 2]) and struct.unpack_from("<2q2q", data, 29) == (1, 2, 5, 6)
    assert data[61:63] == bytes([1, 0]) and struct.unpack_from("<q", data, 63) == (4,)
    assert data[71:73] == bytes([4, 0]) and struct.unpack_from("<q", data, 73) == (7,) and len(data) == 81


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--bits", "9"], "--bits must be in 3..8"), (["--bits", "x"], "comma-separated precisions")],
)
def test_run_sh_rejects_bad_precisions_in_one_line(args, message, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ARM64 / "arm64_check.py"), str(tmp_path), *args], capture_output=True, text=True
    )
    assert proc.returncode == 2 and message in proc.stderr


def test_missing_artifact_is_a_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ARM64 / "arm64_check.py"), str(tmp_path / "nope")], capture_output=True, text=True
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr


def test_missing_qemu_is_a_reason_to_skip_that_names_the_package(monkeypatch, tmp_path):
    import userland  # examples/arm64/userland.py, on sys.path once arm64_check is loaded

    real_which = userland.shutil.which
    monkeypatch.setattr(userland.shutil, "which", lambda name: None if name == "qemu-aarch64" else real_which(name))
    with pytest.raises(check.Arm64Unavailable, match="apt-get install qemu-user"):
        check.prepare_userland(tmp_path / "cache", log=lambda _: None)
    assert not (tmp_path / "cache").exists()  # nothing downloaded
