"""The phone path on ARM64: an exported artifact in the runtimes' own aarch64 builds, compared with x86.

    examples/arm64/run.sh ARTIFACT_DIR [--bits 3,4,5,6,7,8] [--no-tasks] [--cache DIR]

What runs under ``qemu-aarch64 -L ROOT`` (user-mode emulation; see userland.py for ROOT):

* ``.onnx``: onnxruntime's aarch64 wheel, the project's custom-op library cross-built for aarch64 (NEON)
  and examples/arm64/phone_run.py (numpy + onnxruntime only: otaro_export needs torch, which stays on
  x86). It replays the onnxruntime calls that ``otaro_export.runtime`` made on x86 (record.py), then runs
  the demo's task flow from a mobile bundle (``otaro demo --write-mobile-bundle``) through the apps' engine,
  examples/mobile/bundle_runner.py. Both with the fused library and with stock onnxruntime's function body;
* ``.pte``: ExecuTorch's C++ runtime from its aarch64 wheel (``libexecutorch*.so``) driven by
  examples/arm64/pte_runner.cc, with the project's ExecuTorch kernel library cross-built for aarch64,
  replaying the method calls the x86 runtime made.

The x86 run is the same replay on the host (phone_run.py) or the runtime's own result (``.pte``); each cell
of the printed table is ``max |logits_arm64 - logits_x86| / max |logits_x86|`` at one precision, and the
torch reference (``reference=``) adds columns. Under qemu nothing says how fast NEON is on a phone: this
check is about results, never speed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record import (  # noqa: E402
    bits_position,
    read_pte_outputs,
    record_forward,
    write_onnx_calls,
    write_pte_calls,
)
from userland import (  # noqa: E402
    Arm64Unavailable,
    CommandFailed,
    Userland,
    cache_root,
    prepare_userland,
    pte_runner,
    run_command,
)

__all__ = ["Arm64Unavailable", "Report", "check", "prepare_userland", "relative_difference"]

PROMPT = "One file on the phone, and every precision from E5M3 to E5M8."
MAX_PROMPT_TOKENS = 16
#: float32 sums in another order (NEON vs AVX2 kernels, aarch64 vs x86 MLAS): ~1e-6 of the logit scale;
#: 1e-4 leaves a wide margin yet is far below what one precision step changes.
TOLERANCE = 1e-4
QEMU_TIMEOUT_S = 900


# -- comparison ---------------------------------------------------------------------------------------------


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|: one number per precision, independent of the logit scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"logits of shape {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


@dataclass
class Column:
    title: str
    diffs: dict[int, float]  # bits -> relative difference
    argmax_equal: dict[int, bool] = field(default_factory=dict)


@dataclass
class Report:
    artifact: Path
    target: str
    kernels: str
    environment: str
    prompt_tokens: int
    columns: list[Column] = field(default_factory=list)
    #: the logits compared, by run ("x86 fused", "arm64 fused", "torch", ...): bits -> [S, V]
    logits: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    tolerance: float = TOLERANCE

    @property
    def ok(self) -> bool:
        return not self.failures

    def add(self, title: str, arm: dict[int, np.ndarray], x86: dict[int, np.ndarray]) -> Column:
        col = Column(title, {}, {})
        for bits in x86:
            col.diffs[bits] = relative_difference(arm[bits], x86[bits])
            col.argmax_equal[bits] = bool(np.array_equal(np.argmax(arm[bits], -1), np.argmax(x86[bits], -1)))
            if not col.diffs[bits] <= self.tolerance:
                self.failures.append(f"{title} at E5M{bits}: {col.diffs[bits]:.2e} > {self.tolerance:.0e}")
        self.columns.append(col)
        return col

    def format(self) -> str:
        lines = [
            f"ARM64 check of {self.artifact} ({self.target}, kernels {self.kernels})",
            f"  {self.environment}",
            f"  prompt of {self.prompt_tokens} tokens; each cell: max |logits - other| / max |other| "
            "(* = some position's argmax differs)",
        ]
        widths = [max(len(c.title), 9) for c in self.columns]
        lines.append(("  precision  " + "  ".join(c.title.ljust(w) for c, w in zip(self.columns, widths))).rstrip())
        for bits in sorted(self.columns[0].diffs) if self.columns else []:
            cells = [
                (f"{c.diffs[bits]:.1e}" + ("" if c.argmax_equal.get(bits, True) else "*")).ljust(w)
                for c, w in zip(self.columns, widths)
            ]
            lines.append((f"  E5M{bits}       " + "  ".join(cells)).rstrip())
        lines += [f"  {n}" for n in self.notes]
        verdict = "PASS" if self.ok else "FAIL: " + "; ".join(self.failures)
        lines.append(f"  result: {verdict} (tolerance {self.tolerance:.0e})")
        return "\n".join(lines)


# -- the two targets ----------------------------------------------------------------------------------------


def _prompt_ids(session) -> list[int]:
    tok = session.tokenizer
    ids = list(tok(PROMPT, add_special_tokens=False)["input_ids"]) if tok is not None else []
    if not ids:  # no tokenizer: any fixed ids inside the vocabulary
        vocab = int(session.manifest.model.get("vocab_size") or 256)
        ids = [(7 * i + 3) % vocab for i in range(MAX_PROMPT_TOKENS)]
    return ids[: max(1, min(session.max_seq_len, MAX_PROMPT_TOKENS))]


def _by_bits(logits: dict[str, np.ndarray], recorded) -> dict[int, np.ndarray]:
    """phone_run's per-call logits -> per precision, every call's output stacked along the positions."""
    return {
        b: np.concatenate([logits[f"{b}_{i}"].reshape(-1, logits[f"{b}_{i}"].shape[-1]) for i in range(len(calls))])
        for b, calls in recorded.calls.items()
    }


def _phone_run(prefix: list, env: dict | None, model: Path, calls: Path, out: Path, runs, bundle, what) -> dict:
    """phone_run.py with ``runs`` [(name, library | None)], the demo tasks in the first; results by name."""
    cmd = [*prefix, HERE / "phone_run.py", model, calls, out]
    for name, library in runs:
        cmd += ["--run", f"{name}={library or '-'}"]
    if bundle is not None:
        cmd += ["--tasks", f"{runs[0][0]}={bundle}"]
    run_command(cmd, what, timeout=QEMU_TIMEOUT_S, env=env)
    results = {}
    for name, _ in runs:
        results[name] = json.loads((out / name / "result.json").read_text())
        with np.load(out / name / "logits.npz") as data:
            results[name]["logits"] = {key: data[key] for key in data.files}
    return results


def _compare_tasks(report: Report, label: str, arm: list[dict], x86: list[dict]) -> None:
    same = [a["name"] == x["name"] and a["bits"] == x["bits"] and a["answer"] == x["answer"] for a, x in zip(arm, x86)]
    score_diff = max(
        (abs(a["scores"][k] - x["scores"][k]) for a, x in zip(arm, x86) for k in x["scores"]),
        default=0.0,
    )
    tasks = ", ".join(f"{x['name']} E5M{x['bits']}" for x in x86)
    report.notes.append(
        f"demo tasks ({label}): {sum(same)}/{len(x86)} answers equal to x86 [{tasks}]; "
        f"max option-score difference {score_diff:.1e}"
    )
    if len(arm) != len(x86) or not all(same):
        report.failures.append(f"demo tasks ({label}): answers differ from x86")


def _demo_bundle(session, out: Path) -> tuple[Path | None, str | None]:
    """The demo's task flow as the apps get it, or (None, why not)."""
    from otaro_export.demo import load_policy, load_tasks
    from otaro_export.demo.mobile_bundle import BUNDLE_NAME, write_mobile_bundle
    from otaro_export.errors import OtaroError

    try:
        write_mobile_bundle(session, load_policy(), load_tasks(), out)
    except (OtaroError, ValueError) as exc:
        return None, f"the demo's mobile bundle cannot drive this artifact: {exc}"
    longest = max(len(t["prompt_ids"]) for t in json.loads((out / BUNDLE_NAME).read_text())["tasks"])
    if longest >= session.max_seq_len:
        return None, (
            f"prompts of up to {longest} tokens need an export with --max-seq-len > {longest} "
            f"(this one has {session.max_seq_len})"
        )
    return out, None


def check_onnx(directory: Path, userland: Userland, bits: list[int], tasks: bool, reference, work: Path, log) -> Report:
    from otaro_export.runtime_ops import build, ort_library

    log("x86: otaro_export.runtime, recording its onnxruntime calls")
    session, ids, recorded = record_forward(directory, _prompt_ids, bits)
    manifest = session.manifest
    calls = write_onnx_calls(work / "calls", recorded)
    env = (
        f"aarch64: Debian {userland.suite} arm64 userland, Python {userland.python_version}, onnxruntime "
        f"{userland.versions['onnxruntime']} (PyPI manylinux aarch64 wheel), numpy {userland.versions['numpy']}, "
        f"under {Path(userland.qemu).name}; x86: the same replay (phone_run.py) on the host"
    )
    report = Report(directory, "onnx", manifest.kernels, env, len(ids))
    bundle, why_no_tasks = _demo_bundle(session, work / "bundle") if tasks else (None, None)
    if why_no_tasks:
        report.failures.append(f"demo tasks: {why_no_tasks}")
    modes = [("stock", None, None)]  # (name, x86 library, aarch64 library)
    if manifest.kernel_library == "onnxruntime":
        log("building the onnxruntime custom-op library for aarch64 (NEON) and x86")
        modes.insert(0, ("fused", ort_library.library_path(), build.build_aarch64_library("onnxruntime")))
    model = directory / manifest.artifact
    labels = {"fused": "fused (NEON library)", "stock": "stock (function body)"}
    what = " and ".join(labels[name] for name, _, _ in modes) + (" + demo tasks" if bundle else "")
    log(f"x86: replay, {what}")
    x86_runs = _phone_run(
        [sys.executable], None, model, calls, work / "x86", [(n, lib) for n, lib, _ in modes], bundle, "x86 run"
    )
    log(f"aarch64 under qemu: replay, {what}")
    arm_runs = _phone_run(
        userland.command(userland.python), userland.env(), model, calls, work / "arm64",
        [(n, lib) for n, _, lib in modes], bundle, "aarch64 run under qemu",
    )  # fmt: skip
    for name, _, _ in modes:
        arm, x86 = arm_runs[name], x86_runs[name]
        if arm["machine"] != "aarch64":
            raise RuntimeError(f"the emulated run reports machine {arm['machine']!r}, not aarch64")
        arm_logits, x86_logits = _by_bits(arm["logits"], recorded), _by_bits(x86["logits"], recorded)
        report.add(f"arm64 {name} vs x86", arm_logits, x86_logits)
        report.logits[f"arm64 {name}"], report.logits[f"x86 {name}"] = arm_logits, x86_logits
        for side, res in (("aarch64", arm), ("x86", x86)):
            if res["invalid_bits_error"] is None:
                report.failures.append(f"{side} {name}: bits=9 ran without an error")
        report.notes.append(f"bits=9, arm64 {name}: rejected ({arm['invalid_bits_error']})")
        if "tasks" in arm:
            label = f"bundle_runner on aarch64, {name}, {arm['tasks_s']:.0f} s under qemu"
            _compare_tasks(report, label, arm["tasks"], x86["tasks"])
    # the replay is faithful: on x86 it gives what Session.forward gave
    own = report.logits[f"x86 {modes[0][0]}"]
    replay = max(relative_difference(own[b][-len(recorded.forward[b]) :], recorded.forward[b]) for b in bits)
    report.notes.append(f"x86: replaying the runtime's onnxruntime calls reproduces Session.forward to {replay:.1e}")
    if not replay <= report.tolerance:
        report.failures.append(f"the replayed calls do not reproduce Session.forward on x86 ({replay:.1e})")
    if why_no_tasks:
        report.notes.append(f"demo tasks not run: {why_no_tasks}")
    if reference is not None:
        ref = {b: np.asarray(reference(np.asarray([ids], np.int64), b), np.float32)[0] for b in bits}
        report.logits["torch"] = ref
        report.add("x86 vs torch", recorded.forward, ref)
        arm = report.logits[f"arm64 {modes[0][0]}"]
        report.add(f"arm64 {modes[0][0]} vs torch", {b: arm[b][-len(ref[b]) :] for b in bits}, ref)
    return report


#: ExecuTorch's LLM custom ops (extension/llm/custom_ops): ``llama::update_cache``, ``llama::custom_sdpa``, ...
LLM_OPS_NAMESPACE = "llama::"


def _raise_if_llm_ops_missing(output: str) -> None:
    """A .pte whose only missing kernels are ExecuTorch's LLM custom ops cannot run in this check: say so."""
    missing = sorted(set(re.findall(r"Missing operator: \[\d+\] (\S+)", output)))
    if missing and all(op.startswith(LLM_OPS_NAMESPACE) for op in missing):
        raise Arm64Unavailable(
            f"this .pte needs ExecuTorch's LLM custom-op kernels ({', '.join(missing)}), which no aarch64 build "
            "here provides: the executorch wheel has them only in extension/llm/custom_ops/libcustom_ops_aot_lib.so, "
            "which links libtorch and torch's Python extension, and ExecuTorch publishes no source distribution "
            "on PyPI to cross-build them from (an app links them from ExecuTorch's own source build). Re-export "
            "with `otaro-export --target executorch --attention portable` for a .pte whose attention uses "
            "standard ops only"
        )


def check_pte(directory: Path, userland: Userland, bits: list[int], reference, work: Path, log) -> Report:
    from otaro_export.runtime_ops import build

    log("x86: otaro_export.runtime, recording its ExecuTorch method calls")
    session, ids, recorded = record_forward(directory, _prompt_ids, bits)
    manifest = session.manifest
    env = (
        f"aarch64: ExecuTorch {userland.versions.get('executorch')} runtime (libexecutorch*.so of the PyPI "
        f"aarch64 wheel) driven by examples/arm64/pte_runner.cc, under {Path(userland.qemu).name}; "
        "x86: otaro_export.runtime"
    )
    report = Report(directory, "executorch", manifest.kernels, env, len(ids))
    calls = [(method, inputs) for b in bits for method, inputs, _ in recorded.calls[b]]
    try:
        where = bits_position(recorded)
        method, inputs, _ = recorded.calls[bits[0]][-1]
        bad = list(inputs)
        bad[where] = 9 if isinstance(bad[where], int) else np.asarray(9, bad[where].dtype)
        calls.append((method, bad))  # must fail in the kernel (or the portable decomposition's check)
    except RuntimeError as exc:
        where = None
        report.notes.append(f"bits=9 not checked: {exc}")
    write_pte_calls(work / "calls.bin", calls)
    data_files = list(manifest.extra.get("data_files") or [])
    cmd = [pte_runner(userland, log), directory / manifest.artifact, directory / data_files[0] if data_files else "-"]
    cmd += [work / "calls.bin", work / "outputs.bin"]
    if manifest.kernel_library == "executorch":
        log("building the ExecuTorch kernel library for aarch64 (NEON)")
        cmd.append(build.build_aarch64_library("executorch", userland.executorch))
    log("aarch64 under qemu: the .pte with ExecuTorch's C++ runtime")
    try:
        proc = run_command(userland.command(*cmd), "pte_runner under qemu", timeout=QEMU_TIMEOUT_S, env=userland.env())
    except CommandFailed as exc:
        _raise_if_llm_ops_missing(exc.proc.stdout + exc.proc.stderr)
        raise
    outputs = read_pte_outputs(work / "outputs.bin", len(calls))
    arm, x86, k = {}, {}, 0
    for b in bits:
        arm_b, x86_b = [], []
        for _method, _inputs, out in recorded.calls[b]:
            if isinstance(outputs[k], int):
                raise RuntimeError(
                    f"ExecuTorch on aarch64 failed at E5M{b} (error 0x{outputs[k]:x}):\n{proc.stderr[-1500:]}"
                )
            arm_b.append(outputs[k].reshape(-1, outputs[k].shape[-1]))
            x86_b.append(np.asarray(out).reshape(-1, out.shape[-1]))
            k += 1
        arm[b], x86[b] = np.concatenate(arm_b), np.concatenate(x86_b)
    report.add("arm64 vs x86", arm, x86)
    report.logits.update({"arm64": arm, "x86": x86})
    if where is not None:
        status = outputs[-1]
        if isinstance(status, int):
            said = next((line.split("] ", 1)[-1] for line in proc.stderr.splitlines() if "bits" in line), "")
            report.notes.append(
                f"bits=9, arm64: rejected (ExecuTorch error 0x{status:x}{': ' + said[:160] if said else ''})"
            )
        else:
            report.failures.append("bits=9 ran on aarch64 without an error")
    if reference is not None:
        ref = {b: np.asarray(reference(np.asarray([ids], np.int64), b), np.float32)[0] for b in bits}
        report.logits["torch"] = ref
        report.add("x86 vs torch", recorded.forward, ref)
        report.add("arm64 vs torch", {b: arm[b][-len(ref[b]) :] for b in bits}, ref)
    report.notes.append("demo tasks: not run for .pte (the mobile bundle and apps use onnxruntime)")
    return report


def check(
    artifact: str | Path,
    bits: list[int] | None = None,
    tasks: bool = True,
    reference: Callable[[np.ndarray, int], np.ndarray] | None = None,
    cache: Path | None = None,
    log=print,
) -> Report:
    """Run ``artifact`` (an export directory or its file) on aarch64 under qemu and compare with x86.

    ``reference(input_ids [1, S], bits) -> logits [1, S, V]`` (e.g. a TorchSession's ``forward``) adds
    the torch-reference columns. Raises Arm64Unavailable when qemu, the cross compiler or the packages
    cannot be had.
    """
    from otaro_export.manifest import Manifest

    directory = Path(artifact)
    if not directory.exists():
        raise ValueError(f"{directory} does not exist: pass an export directory (otaro-export --output DIR)")
    directory = directory if directory.is_dir() else directory.parent
    manifest = Manifest.load(directory)
    bits = bits or list(manifest.precisions)
    t0 = time.perf_counter()
    userland = prepare_userland(cache, executorch=manifest.target == "executorch", log=log)
    log(f"arm64 userland ready in {time.perf_counter() - t0:.1f} s")
    with tempfile.TemporaryDirectory(prefix="otaro-arm64-") as tmp:
        if manifest.target == "onnx":
            report = check_onnx(directory, userland, bits, tasks, reference, Path(tmp), log)
        elif manifest.target == "executorch":
            if userland.executorch is None:
                raise Arm64Unavailable(userland.versions.get("executorch_unavailable", "no aarch64 executorch"))
            report = check_pte(directory, userland, bits, reference, Path(tmp), log)
        else:
            raise ValueError(f"{directory}: unknown target {manifest.target!r}")
    report.notes.append(
        f"took {time.perf_counter() - t0:.0f} s; qemu emulation says nothing about NEON speed on a phone"
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="examples/arm64/run.sh", description="Run an exported artifact on ARM64 (qemu) and compare with x86."
    )
    parser.add_argument("artifact", type=Path, help="export directory (or its model.onnx / model.pte)")
    parser.add_argument("--bits", default=None, help="precisions to compare, e.g. 3,8 (default: the manifest's)")
    parser.add_argument("--no-tasks", action="store_true", help="skip the demo task flow (ONNX)")
    parser.add_argument("--cache", type=Path, default=None, help=f"cache directory (default {cache_root()})")
    args = parser.parse_args(argv)
    bits = None
    if args.bits:
        try:
            bits = [int(b.strip().upper().removeprefix("E5M")) for b in args.bits.split(",")]
        except ValueError:
            parser.error(f"--bits takes comma-separated precisions such as 3,8 or E5M3,E5M8, got {args.bits!r}")
        if any(not 3 <= b <= 8 for b in bits):
            parser.error(f"--bits must be in 3..8, got {args.bits!r}")
    from otaro_export.errors import OtaroError

    log = lambda msg: print(f"[arm64] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        report = check(args.artifact, bits, not args.no_tasks, cache=args.cache, log=log)
    except Arm64Unavailable as exc:
        print(f"error: the ARM64 check cannot run here: {exc}", file=sys.stderr)
        return 3
    except (OtaroError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.format())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
