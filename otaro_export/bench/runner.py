"""Run the whole benchmark: exports (cached), interleaved speed measurement, accuracy, report.

Everything runs on this machine in one invocation with the same thread count,
so every ratio compares numbers taken under the same conditions. The machine
may be shared and its load drifts over minutes, so the decode-speed
configurations are not measured one after another: each is loaded once in its
own process and they are timed in interleaved rounds (:mod:`.interleave`), and
the goal ratios are computed within each round. The slow portable fallbacks
(seconds per token, no goal depends on them) and the switching jobs run one
fresh process each, afterwards. The 1-minute load average is sampled around
every job and every round, and every speed is a median over several runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from otaro_export.bench import report
from otaro_export.bench.artifacts import EXPORT_RECORD_NAME, artifact_dir, ensure_artifact_timed, is_complete
from otaro_export.bench.configs import BenchSettings, RunConfig
from otaro_export.bench.interleave import DecodeJob, JobFailed, exit_message, measure_interleaved
from otaro_export.bench.worker import RESULT_PREFIX, REWARM_TOKENS
from otaro_export.errors import OtaroError

#: llama-cpp-python built natively on a CPU with AMX crashed in ggml's AMX matmul (batch > 1) here
LLAMA_CPP_AMX_HINT = (
    "llama.cpp built with its AMX kernels crashes on some machines; rebuild it without them: "
    "CMAKE_ARGS=\"-DCMAKE_C_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16' "
    "-DCMAKE_CXX_FLAGS='-mno-amx-tile -mno-amx-int8 -mno-amx-bf16'\" "
    "pip install --no-cache-dir --force-reinstall --no-deps llama-cpp-python"
)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import psutil

        mem_gib = psutil.virtual_memory().total / 2**30
    except ImportError:
        mem_gib = float("nan")
    versions = {}
    for module in ("onnxruntime", "executorch", "llama_cpp", "torch"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # not installed or no __version__: leave it out
            pass
    kernels = {}
    try:
        from otaro_export.runtime_ops.core_ctypes import CoreKernels

        core = CoreKernels.load()
        kernels = {"isa": core.best_isa(), "int8": core.int8_kernel_name()}
    except Exception as exc:  # no compiler: the rows that need the kernels say so themselves
        kernels = {"error": str(exc).splitlines()[0]}
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "sefp_kernels": kernels,
        "memory_gib": round(mem_gib, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def _child_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OTARO_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env.setdefault("TQDM_DISABLE", "1")
    return env


def run_worker(job: dict, threads: int, timeout_s: float) -> dict:
    """Run one job in a fresh Python process; return its result dict or raise JobFailed."""
    cmd = [sys.executable, "-m", "otaro_export.bench.worker", json.dumps(job)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_child_env(threads), timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(f"timed out after {timeout_s:.0f}s") from exc
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
    raise JobFailed(exit_message(proc.returncode, tail))


def artifact_mib(directory: Path) -> float:
    """Size of the model files (artifact + external data), without tokenizer, manifest and the bench's record."""
    skip = ("manifest.json", EXPORT_RECORD_NAME)
    return sum(p.stat().st_size for p in Path(directory).iterdir() if p.is_file() and p.name not in skip) / 2**20


def sefp_storage_from_onnx(path: Path) -> dict | None:
    """Exact SEFP storage of an ONNX artifact: weights (padded K), bytes of planes + exponents, each layer's
    packed [rows, K] (``layers``, named as the manifest's floors) and the manifest's ``precision_floors``."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name: t for t in model.graph.initializer}
    weights = stored = 0
    layers = {}
    for node in model.graph.node:
        if node.domain != "ai.otaro" or node.op_type != "SEFPLinear":
            continue
        tensors = [inits.get(name) for name in node.input[1:6]]
        if any(t is None for t in tensors):
            return None  # constants folded into other nodes: cannot attribute bytes exactly
        n, half_k = tensors[0].dims
        weights += n * half_k * 2
        # the planes are named after the exported layer: "<layer>.sefp_p0"
        layers[node.input[1].removesuffix(".sefp_p0")] = [int(n), int(half_k) * 2]
        stored += sum(int(__import__("math").prod(t.dims)) for t in tensors)  # uint8/int8: one byte each
    if not weights:
        return None
    manifest = json.loads((Path(path).parent / "manifest.json").read_text(encoding="utf-8"))
    return {
        "sefp_weights": weights,
        "sefp_stored_bytes": stored,
        "bytes_per_sefp_weight": stored / weights,
        "layers": layers,
        # what the memory table's bits read per weight follow (report.read_per_token)
        "precision_floors": manifest.get("extra", {}).get("precision_floors", {}),
    }


def prompt_ids(directory: Path, prompt: str) -> list[int]:
    from otaro_export.manifest import Manifest
    from otaro_export.runtime import load_tokenizer

    tokenizer = load_tokenizer(directory, Manifest.load(directory))
    if tokenizer is None:
        raise OtaroError(f"no tokenizer in {directory}")
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


def llama_cpp_gguf(model: str) -> Path | None:
    if model == "default":
        from otaro_export.models import default_gguf_path

        return default_gguf_path()
    return Path(model) if model.endswith(".gguf") else None


def gguf_quant_type(path: Path) -> str:
    """The quantization named in the GGUF file name (e.g. Q4_1), else 'gguf'."""
    import re

    match = re.search(r"\b(Q\d_[0-9K_A-Z]+|F16|F32|BF16)\b", path.stem.replace(".", " "))
    return match.group(1) if match else "gguf"


class LoadSampler:
    """1-minute load average sampled around every job."""

    def __init__(self) -> None:
        self.samples: list[float] = []

    def sample(self) -> None:
        self.samples.append(round(os.getloadavg()[0], 2))

    def summary(self) -> dict:
        if not self.samples:
            return {}
        return {
            "min": min(self.samples),
            "median": statistics.median(self.samples),
            "max": max(self.samples),
            "samples": self.samples,
        }


def _speed_jobs(settings: BenchSettings, config: RunConfig) -> list[int | None]:
    if config.is_fp32:
        return [None]
    return list(settings.slow_bits if config.slow else settings.bits)


def _session_job(settings: BenchSettings, config: RunConfig, directory: Path, bits: int | None, ids) -> dict:
    return {
        "kind": "session",
        "directory": str(directory),
        "bits": 8 if bits is None else bits,
        "use_library": config.use_library,
        "prompt_ids": ids,
        "new_tokens": settings.slow_new_tokens if config.slow else settings.new_tokens,
        "runs": settings.slow_runs if config.slow else settings.runs,
        "threads": settings.threads,
    }


def _ort_genai_job(settings, ids, log, record_failure) -> tuple[DecodeJob, dict] | None:
    """The onnxruntime-genai int4 row: its builder's model of the same float weights, same prompt and threads."""
    from otaro_export.bench import ort_genai
    from otaro_export.bench.artifacts import bench_cache_root, model_key

    if not ort_genai.available():
        settings.extra_notes.append("onnxruntime-genai row skipped: the package is not installed")
        return None
    root = Path(settings.cache_dir) if settings.cache_dir else bench_cache_root()
    out = root / f"{model_key(settings.model)}-ort-genai-int4"
    if not settings.export_missing and not (out / "genai_config.json").is_file():
        record_failure(ort_genai.LABEL, OtaroError("its int4 model is not built yet and --no-export was given"))
        return None
    try:
        directory = ort_genai.build_int4(settings.model, out, log)
    except OtaroError as exc:
        record_failure("onnxruntime-genai build", exc)
        return None
    job = {
        "kind": "ort_genai",
        "directory": str(directory),
        "prompt_ids": ids,
        "new_tokens": settings.new_tokens,
        "threads": settings.threads,
    }
    size = sum(p.stat().st_size for p in directory.glob("model.onnx*")) / 2**20
    row = {"config": ort_genai.LABEL, "runtime": ort_genai.RUNTIME, "precision": "int4", "bits": None}
    return DecodeJob(ort_genai.LABEL, job, settings.threads), {**row, "artifact_mib": size}


def _llama_cpp_jobs(settings, ids) -> list[tuple[DecodeJob, dict]]:
    gguf = llama_cpp_gguf(settings.model) if settings.llama_cpp else None
    if settings.llama_cpp and gguf is None:
        settings.extra_notes.append("llama.cpp baseline skipped: --model is neither 'default' nor a .gguf file")
    if gguf is None:
        return []
    quant = gguf_quant_type(gguf)
    job = {
        "kind": "llama_cpp",
        "gguf": str(gguf),
        "prompt_ids": ids,
        "new_tokens": settings.new_tokens,
        "threads": settings.threads,
        "n_ctx": settings.max_seq_len,
    }
    # (label, runtime, threads). The 1-thread row exists because llama.cpp's threads spin at
    # barriers, which collapses when the cores are shared; the E5M3 goal is judged against the
    # faster of the two rows (report.evaluate_goals), never against a collapsed baseline.
    llama_rows = [(report.LLAMA_CPP, report.LLAMA_CPP, settings.threads)]
    if settings.threads > 1:
        llama_rows.append(("llama.cpp 1 thread", "llama.cpp-1thread", 1))
    size = gguf.stat().st_size / 2**20
    jobs = []
    for label, runtime, threads in llama_rows:
        name = f"llama.cpp {quant}" + ("" if threads == settings.threads else f" {threads} thread")
        row = {"config": label, "runtime": runtime, "precision": quant, "bits": None, "artifact_mib": size}
        jobs.append((DecodeJob(name, {**job, "threads": threads}, threads), row))
    return jobs


def _speed_result(row: dict, r: dict, new_tokens: int, runs: int) -> report.SpeedResult:
    return report.SpeedResult(
        row["config"], row["runtime"], row["precision"], row["bits"], r["decode_tok_s"], r["prefill_tok_s"],
        r["peak_rss_mib"], row["artifact_mib"], new_tokens, runs, r,
    )  # fmt: skip


def _log_result(log, r: dict) -> None:
    mapped = r.get("artifact_mapped_rss_mib")
    log(
        f"  decode {r['decode_tok_s']:.1f} tok/s, prefill {r['prefill_tok_s']:.1f} tok/s, "
        f"peak RSS {r['peak_rss_mib']:.0f} MiB" + (f", artifact mapping {mapped:.1f} MiB" if mapped is not None else "")
    )


def run_bench(settings: BenchSettings, log: Callable[[str], None] = print) -> dict:
    """Run everything ``settings`` asks for; write JSON + PNGs into ``settings.output``; return the report."""
    settings.validate()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    t_start = time.perf_counter()
    loads = LoadSampler()
    loads.sample()
    out = Path(settings.output)
    out.mkdir(parents=True, exist_ok=True)

    specs = settings.artifacts()
    exports: dict[str, dict] = {}  # artifact name -> how long its export took (this run or the cached one's)

    def obtain(spec) -> Path:
        directory, timed = ensure_artifact_timed(
            spec, settings.model, settings.max_seq_len, settings.cache_dir, log=log
        )
        labels = [c.label for c in settings.run_configs() if c.artifact == spec]
        exports[spec.name] = {"configs": labels, **timed.to_json()}
        return directory

    dirs = {specs[0]: obtain(specs[0])}
    ids = prompt_ids(dirs[specs[0]], settings.prompt)  # checked before the other (slow) exports
    need = len(ids) + max(settings.new_tokens, settings.switch_steps + 1)
    if need > settings.max_seq_len:
        raise OtaroError(
            f"the prompt ({len(ids)} tokens) + {need - len(ids)} new tokens exceed --max-seq-len {settings.max_seq_len}: "
            "use a shorter --prompt, fewer --new-tokens or a larger --max-seq-len"
        )

    def artifact(spec) -> Path:
        # exported (or awaited, if another run is exporting it) only when first needed
        if spec not in dirs:
            if not settings.export_missing and not is_complete(
                artifact_dir(spec, settings.model, settings.max_seq_len, settings.cache_dir)
            ):
                raise OtaroError(f"{spec.name} is not exported yet and --no-export was given")
            dirs[spec] = obtain(spec)
        return dirs[spec]

    log(
        f"prompt: {len(ids)} tokens; {settings.new_tokens} new tokens; {settings.runs} timed runs; {settings.threads} threads"
    )

    results: list[report.SpeedResult] = []
    failures: list[dict] = []

    def record_failure(what: str, exc: Exception, logged: bool = False) -> None:
        if not logged:
            log(f"  FAILED {what}: {exc}")
        failures.append({"what": what, "error": str(exc)})

    # The decode-speed rows: llama.cpp, onnxruntime-genai, every fast configuration x precision. Their
    # exports first (minutes each), so that nothing is exported while workers hold their models.
    configs = settings.run_configs()
    decode_jobs = _llama_cpp_jobs(settings, ids)
    if settings.ort_genai:
        entry = _ort_genai_job(settings, ids, log, record_failure)
        decode_jobs += [entry] if entry is not None else []

    def speed_cells(slow: bool):
        """(config, artifact directory, bits, precision, table row) of every speed job of the fast or slow
        configurations; a configuration whose export fails is recorded and skipped."""
        for config in (c for c in configs if c.slow == slow):
            try:
                directory = artifact(config.artifact)
            except OtaroError as exc:
                record_failure(f"export {config.artifact.name}", exc)
                continue
            for bits in _speed_jobs(settings, config):
                precision = report.FP32 if bits is None else f"E5M{bits}"
                row = {"config": config.label, "runtime": config.runtime, "precision": precision, "bits": bits}
                yield config, directory, bits, precision, {**row, "artifact_mib": artifact_mib(directory)}

    for config, directory, bits, precision, row in speed_cells(slow=False):
        job = _session_job(settings, config, directory, bits, ids)
        decode_jobs.append((DecodeJob(f"{config.label} {precision}", job, settings.threads), row))

    measured = measure_interleaved(
        [j for j, _ in decode_jobs],
        settings.runs,
        _child_env,
        settings.job_timeout_s,
        log=log,
        on_round=lambda _: loads.sample(),
    )
    for name, error in measured.failures:
        if name.startswith("llama.cpp") and "signal SIGSEGV" in error:
            error = f"{error}. {LLAMA_CPP_AMX_HINT}"
        record_failure(name, JobFailed(error), logged=True)
    for job, row in decode_jobs:
        r = measured.results.get(job.name)
        if r is not None:
            results.append(_speed_result(row, r, settings.new_tokens, settings.runs))
            log(f"{job.name}:")
            _log_result(log, r)
    schedule = {
        "decode": "interleaved",
        "rounds": settings.runs,
        "orders": measured.orders,
        "workers_resident_total_mib": measured.resident_total_mib,
        "rewarm_tokens": REWARM_TOKENS,
        "sequential": [],
    }

    # the slow portable fallbacks: seconds per token and no goal depends on them, so one fresh
    # process each, after the interleaved rounds (interleaving them would stretch every round by minutes)
    for config, directory, bits, precision, row in speed_cells(slow=True):
        log(f"{config.label} {precision} (sequential) ...")
        loads.sample()
        try:
            r = run_worker(
                _session_job(settings, config, directory, bits, ids), settings.threads, settings.job_timeout_s
            )
        except (JobFailed, OSError) as exc:
            record_failure(f"{config.label} {precision}", exc)
            continue
        results.append(_speed_result(row, r, settings.slow_new_tokens, settings.slow_runs))
        schedule["sequential"].append(f"{config.label} {precision}")
        _log_result(log, r)

    order = {c.label: i for i, c in enumerate(configs)}
    results.sort(key=lambda r: (order.get(r.config, -1), r.bits or 0))  # table order: by runtime, then precision
    switch: dict[str, dict] = {}
    for config in configs:
        if config.is_fp32 or config.slow or not {3, 8} <= set(settings.bits):
            continue
        if config.artifact not in dirs:
            continue  # its export failed (reported above)
        job = {
            "kind": "switch",
            "directory": str(dirs[config.artifact]),
            "prompt_ids": ids,
            "threads": settings.threads,
            "steps": settings.switch_steps,
            "rounds": settings.switch_rounds,
            "low": 3,
            "high": 8,
        }
        log(f"{config.label}: precision switching ...")
        loads.sample()
        try:
            switch[config.label] = run_worker(job, settings.threads, settings.job_timeout_s)
            log(f"  alternating/fixed step time: {switch[config.label]['switch_ratio']:.3f}")
        except (JobFailed, OSError) as exc:
            record_failure(f"{config.label} switching", exc)
    loads.sample()

    storage = None
    onnx_sefp = next((d for s, d in dirs.items() if s.target == "onnx" and s.weights == "sefp"), None)
    if onnx_sefp is not None:
        storage = sefp_storage_from_onnx(onnx_sefp / "model.onnx")
    et_mapped = {
        r.bits: r.extra.get("artifact_mapped_rss_mib", float("nan"))
        for r in results
        if r.config == "executorch fused" and r.bits is not None
    }
    resident, resident_note = ({}, "needs the SEFP storage size (from the ONNX artifact)")
    if not et_mapped:
        resident_note = "needs the executorch fused rows (the mmapped .pte) at E5M3 and E5M8"
    elif storage is not None:
        resident, resident_note = report.resident_sefp_weights(et_mapped, storage["sefp_stored_bytes"])

    accuracy: dict[str, list] = {}
    accuracy_rules: dict[str, dict] = {}
    if settings.accuracy:
        log(f"accuracy: {settings.eval_samples} samples of up to {settings.eval_gen_tokens} tokens ...")
        loads.sample()
        try:
            import torch

            torch.set_num_threads(settings.threads)
            from otaro_export.bench.accuracy import evaluate_accuracy

            accuracy, accuracy_rules = evaluate_accuracy(
                settings.model,
                settings.bits,
                settings.eval_samples,
                settings.eval_gen_tokens,
                settings.checkpoint,
                log=log,
            )
        except OtaroError as exc:
            record_failure("accuracy", exc)
        loads.sample()

    payload = {
        "started": started,
        "wall_s": round(time.perf_counter() - t_start, 1),
        "command": " ".join(["otaro", "bench"] + sys.argv[2:]) if sys.argv[1:2] == ["bench"] else " ".join(sys.argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()},
        "machine": machine_info(),
        "load_average_1min": loads.summary(),
        "schedule": schedule,
        "prompt_tokens": len(ids),
        "speed": [asdict(r) for r in results],
        "switching": switch,
        "sefp_storage": storage,
        "exports": exports,
        "resident_sefp_weights_mib": {str(k): v for k, v in resident.items()},
        "resident_note": resident_note,
        "accuracy": {name: [asdict(r) for r in rs] for name, rs in accuracy.items()},
        # what each accuracy run was measured through; the tuned run's from_run: taken from its checkpoint
        "accuracy_rules": accuracy_rules,
        "failures": failures,
        "notes": settings.extra_notes,
    }
    return write_report(payload, out)


def write_report(payload: dict, out: Path) -> dict:
    """Derive ratios, goals and text from the measured numbers in ``payload``; write JSON, text, PNGs."""
    from otaro_export.train.evaluation import rows_from_json

    fields = report.SpeedResult.__dataclass_fields__
    results = [report.SpeedResult(**{k: row[k] for k in fields}) for row in payload["speed"]]
    accuracy = {name: rows_from_json(rows) for name, rows in payload["accuracy"].items()}
    resident = {int(k): v for k, v in payload["resident_sefp_weights_mib"].items()}
    storage = payload["sefp_storage"]
    rows = report.with_ratios(results)
    goals = report.evaluate_goals(
        results,
        payload["switching"],
        resident,
        payload["resident_note"],
        storage["sefp_weights"] if storage else None,
        payload.get("prompt_tokens"),
        exports=payload.get("exports"),  # None: a bench.json from before export times were recorded
    )
    paired = {g.name: g.paired for g in goals if g.paired is not None}
    payload = {**payload, "speed": rows, "goals": [asdict(g) for g in goals], "paired_ratios": paired}
    payload.pop("text", None)
    report.save_json(out / "bench.json", payload)
    model = payload["settings"]["model"]
    title = f"{model}: {payload['settings']['threads']} threads, {payload['machine']['cpu']}"
    if rows:
        report.plot_speed(rows, out / "speed.png", title)
    if accuracy:
        report.plot_accuracy(accuracy, out / "accuracy.png", f"{model}: accuracy per precision")
    payload["text"] = render_text(payload, accuracy, goals)
    (out / "bench.txt").write_text(payload["text"] + "\n", encoding="utf-8")
    return payload


def rerender(out: Path) -> dict:
    """Rewrite the report of a finished run in ``out`` from its bench.json (nothing is measured again)."""
    path = Path(out) / "bench.json"
    if not path.is_file():
        raise OtaroError(f"no bench.json in {out}: run `otaro bench -o {out}` first")
    return write_report(json.loads(path.read_text(encoding="utf-8")), Path(out))


def _kernel_line(kernels: dict) -> str:
    if "isa" not in kernels:
        return f"SEFP kernels: {kernels.get('error', 'not recorded')}"
    return f"SEFP kernels: {kernels['isa']} path; int8-activation decode kernel: {kernels['int8']}"


def schedule_line(schedule: dict | None) -> str:
    """How the speed rows were timed (a bench.json without ``schedule`` predates interleaving)."""
    if not schedule or schedule.get("decode") != "interleaved":
        return "schedule: sequential (each configuration's runs back to back, one configuration after another)"
    line = (
        f"schedule: interleaved, {schedule['rounds']} round{'s' if schedule['rounds'] != 1 else ''} (every configuration loaded once in its own process; "
        "each round times one run of each, the order varied per round; ratios are per round, median over rounds)"
    )
    if schedule.get("sequential"):
        line += f"; sequential after the rounds: {', '.join(schedule['sequential'])}"
    return line


def render_text(payload: dict, accuracy: dict, goals: list) -> str:
    load = payload["load_average_1min"]
    m = payload["machine"]
    parts = [
        f"otaro bench, started {payload['started']}, {payload['wall_s']:.0f}s; {m['cpu']}, {m['logical_cpus']} logical CPUs; "
        f"1-min load average during the run: min {load.get('min')}, median {load.get('median')}, max {load.get('max')}",
        _kernel_line(m.get("sefp_kernels") or {}),
        schedule_line(payload.get("schedule")),
        f"prompt {payload['prompt_tokens']} tokens; ratios: x anchor = / the fastest anchor row (llama.cpp at "
        "the bench's threads or 1 thread, onnxruntime-genai int4), x fp32 = / fp32 export of the same runtime",
        "",
        report.format_speed_table(payload["speed"]),
    ]
    if payload.get("exports"):
        parts += ["", report.format_exports(payload["exports"])]
    storage = payload["sefp_storage"]
    if storage:
        parts += [
            "",
            f"SEFP storage: {storage['sefp_weights']:,} weights, {storage['sefp_stored_bytes'] / 2**20:.1f} MiB, "
            f"{storage['bytes_per_sefp_weight']:.4f} bytes/weight at rest (fp16: 2, fp32: 4)",
        ]
    resident = {int(k): v for k, v in payload["resident_sefp_weights_mib"].items()}
    if payload["speed"]:
        parts += [
            "",
            "memory per precision (resident SEFP = weights paged in from the mmapped ExecuTorch .pte; "
            "peak RSS = VmHWM of a fresh process, MiB):",
            report.format_memory_table(
                payload["speed"], resident, storage["sefp_weights"] if storage else None, storage
            ),
        ]
    if payload["resident_note"] and not resident:
        parts.append(f"resident SEFP weights not measured: {payload['resident_note']}")
    if payload["switching"]:
        parts += ["", "precision switching (median decode-step ms, fixed vs alternating 3/8 every call):"]
        for name, s in payload["switching"].items():
            steps = "; ".join(
                f"E5M{b}: fixed {s['fixed_step_ms'][b]:.2f} ms, alternating {s['alternating_step_ms'][b]:.2f} ms"
                for b in s["fixed_step_ms"]
            )
            noise = f", noise {s['noise']:.3f}" if s.get("noise") is not None else ""
            parts.append(f"  {name}: {steps}; ratio {s['switch_ratio']:.3f}{noise}")
    if accuracy:
        # None: a bench.json from before the rules were recorded
        parts += ["", report.format_accuracy_table(accuracy, payload.get("accuracy_rules"))]
    parts += ["", "goals:", report.format_goals(goals)]
    if payload["failures"]:
        parts += ["", "FAILED:"] + [f"  {f['what']}: {f['error']}" for f in payload["failures"]]
    for note in payload["notes"]:
        parts.append(f"note: {note}")
    return "\n".join(parts)
