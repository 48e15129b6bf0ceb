"""Export each benchmarked artifact variant once and cache it.

ExecuTorch lowering of SmolLM2 takes minutes, so ``otaro bench`` reuses
artifacts across runs: each variant lives in ``<cache>/<key>/`` where the key
names the model (path + size + mtime of its source), the target, the weights
(SEFP or fp32), the kernel mode and ``max_seq_len``. A variant is written into
a temporary sibling directory and renamed into place only when complete, so
an interrupted export never leaves a directory that looks finished, and a
file lock per variant makes concurrent runs wait for one exporter.

The wall time of each export the bench makes is kept beside the artifact
(:data:`EXPORT_RECORD_NAME`), so a later run on the cache still reports it,
marked as taken by an earlier run.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from otaro_export.errors import OtaroError
from otaro_export.manifest import MANIFEST_NAME

#: in a cached artifact's directory, beside manifest.json: the bench's record of that export (not part of the
#: artifact: the artifact's size leaves it out)
EXPORT_RECORD_NAME = "bench_export.json"


@dataclass(frozen=True)
class ArtifactSpec:
    """One exported file to benchmark."""

    target: str  # "onnx" | "executorch"
    weights: str  # "sefp" | "fp32"
    kernels: str = "fused"  # SEFP only: "fused" | "portable" (how the artifact was *exported*)

    @property
    def name(self) -> str:
        return f"{self.target}-{self.weights}" + (f"-{self.kernels}" if self.weights == "sefp" else "")

    def __post_init__(self) -> None:
        if self.target not in ("onnx", "executorch"):
            raise OtaroError(f"unknown benchmark target {self.target!r}")
        if self.weights not in ("sefp", "fp32"):
            raise OtaroError(f"unknown benchmark weights {self.weights!r}")
        if self.kernels not in ("fused", "portable"):
            raise OtaroError(f"unknown benchmark kernels {self.kernels!r}")


@dataclass(frozen=True)
class ExportTime:
    """How long the bench's export of a cached artifact took (model load + export + writing, wall clock)."""

    wall_s: float | None  # None: cached before the bench recorded export times
    cached: bool  # True: exported by an earlier run, reused by this one
    finished: str | None = None  # UTC time the export finished, "YYYY-MM-DD HH:MM:SS UTC"
    #: 1-minute load average when the export started and when it finished (other work slows an export)
    load_1min: tuple[float, float] | None = None
    torch_threads: int | None = None

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def read_export_time(directory: Path) -> ExportTime:
    """The recorded export of a cached artifact (``cached=True``); ``wall_s`` None if none was recorded."""
    try:
        data = json.loads((Path(directory) / EXPORT_RECORD_NAME).read_text(encoding="utf-8"))
        wall_s = float(data["wall_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return ExportTime(None, cached=True)  # an older cache, or an unreadable record: time unknown
    load = data.get("load_1min")
    threads = data.get("torch_threads")
    return ExportTime(
        wall_s,
        cached=True,
        finished=data.get("finished") if isinstance(data.get("finished"), str) else None,
        load_1min=tuple(float(x) for x in load) if isinstance(load, list) and len(load) == 2 else None,
        torch_threads=int(threads) if isinstance(threads, int) else None,
    )


def bench_cache_root() -> Path:
    from otaro_export.models import cache_dir

    return Path(os.environ.get("OTARO_BENCH_CACHE_DIR", cache_dir() / "bench"))


def model_key(model: str) -> str:
    """A short stable key of the model source: re-export when the source file changes."""
    if model == "default":
        from otaro_export.models import default_gguf_path

        path = default_gguf_path()
    else:
        path = Path(model)
        if not path.exists():
            raise OtaroError(f"--model {model}: no such file or directory")
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
    return f"{path.stem[:40]}-{digest}"


def artifact_dir(spec: ArtifactSpec, model: str, max_seq_len: int, root: Path | None = None) -> Path:
    root = bench_cache_root() if root is None else Path(root)
    return root / f"{model_key(model)}-{spec.name}-L{max_seq_len}"


def is_complete(directory: Path) -> bool:
    import json

    manifest = directory / MANIFEST_NAME
    if not manifest.is_file():
        return False
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return True  # unreadable here: the session that loads it reports what is wrong
    return not (_stale_executorch(data) or _stale_recipe(data) or _stale_onnx(data))


def _stale_onnx(data: dict) -> bool:
    """A cached SEFP ONNX file from before the MLP's SwiGLU was folded into its SEFPLinear (it still runs,
    with four more nodes per layer than what the export writes now): exported again."""
    extra = data.get("extra") or {}
    return data.get("target") == "onnx" and extra.get("weights") == "sefp" and "fused_swiglu" not in extra


def _stale_recipe(data: dict) -> bool:
    """A cached SEFP artifact whose recorded recipe is not what the export writes by default now (e.g. a
    default changed since it was exported): the bench would measure something users no longer get."""
    from otaro_export.export.sefp_recipe import default_recipe

    recorded = (data.get("extra") or {}).get("sefp_recipe")
    if recorded is None or data.get("target") not in ("onnx", "executorch"):
        return False  # an fp32 baseline: nothing to compare
    return recorded != default_recipe().for_target(data["target"]).manifest_fields()


def _stale_executorch(data: dict) -> bool:
    """A cached .pte from before the ExportDecoder-based ExecuTorch decoder (its method took
    cache_position, not input_pos: the session refuses it), or a fused one from before the project's
    attention kernel (it still runs, but slower than what the export writes now): exported again."""
    if data.get("target") != "executorch":
        return False
    if list(data.get("inputs") or [])[:2] != ["input_ids", "input_pos"]:
        return True
    from otaro_export.export.executorch_export import ATTENTION_KERNELS

    extra = data.get("extra") or {}
    fused = data.get("kernel_library") == "executorch"
    attention = extra.get("attention", "llm-ops")
    return fused and attention == "llm-ops" and extra.get("attention_kernel") != ATTENTION_KERNELS[attention, True]


def _export_into(spec: ArtifactSpec, model: str, max_seq_len: int, out: Path, loaded, log) -> None:
    from otaro_export.export.pipeline import ExportOptions, export_model

    if spec.weights == "sefp":
        export_model(
            ExportOptions(target=spec.target, model=model, output=out, kernels=spec.kernels, max_seq_len=max_seq_len),
            log=log,
            loaded=loaded,
        )
        return
    if spec.target == "onnx":
        from otaro_export.export.onnx_export import export_onnx_fp32
        from otaro_export.export.pipeline import ExportOptions

        options = ExportOptions(target="onnx", model=model, output=out, max_seq_len=max_seq_len)
        manifest = export_onnx_fp32(loaded, options, out, log)
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(str(out / manifest.tokenizer))
        manifest.save(out)
    else:
        from otaro_export.export.executorch_export import export_executorch_fp32

        export_executorch_fp32(loaded, out, max_seq_len=max_seq_len, log=log)


def ensure_artifact(
    spec: ArtifactSpec,
    model: str = "default",
    max_seq_len: int = 256,
    root: Path | None = None,
    log: Callable[[str], None] = print,
    loaded_factory: Callable[[], object] | None = None,
) -> Path:
    """Directory of the exported ``spec`` (exported now unless cached); returns it.

    ``loaded_factory`` makes a fresh :class:`LoadedModel` (exporters may modify
    the model in place, so each export gets its own copy); default: ``load_model(model)``.
    """
    return ensure_artifact_timed(spec, model, max_seq_len, root, log, loaded_factory)[0]


def ensure_artifact_timed(
    spec: ArtifactSpec,
    model: str = "default",
    max_seq_len: int = 256,
    root: Path | None = None,
    log: Callable[[str], None] = print,
    loaded_factory: Callable[[], object] | None = None,
) -> tuple[Path, ExportTime]:
    """:func:`ensure_artifact` and how long its export took: now (``cached=False``) or in an earlier run."""
    directory = artifact_dir(spec, model, max_seq_len, root)
    if is_complete(directory):
        return directory, read_export_time(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # One exporter per variant: a second bench run waits here, then finds the finished export.
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_complete(directory):
            return directory, read_export_time(directory)  # exported by the run we waited for
        timed = _export_variant(spec, model, max_seq_len, directory, log, loaded_factory)
    return directory, timed


def _export_variant(spec, model, max_seq_len, directory: Path, log, loaded_factory) -> ExportTime:
    if loaded_factory is None:
        from otaro_export.models import load_model

        def loaded_factory():
            return load_model(model)

    staging = directory.with_name(f"{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    load_start = os.getloadavg()[0]
    t0 = time.perf_counter()  # the model's load counts: `otaro-export` loads it too
    log(f"exporting {spec.name} (max_seq_len {max_seq_len}) into {directory} ...")
    try:
        _export_into(spec, model, max_seq_len, staging, loaded_factory(), log)
        wall_s = time.perf_counter() - t0
        if not is_complete(staging):
            raise OtaroError(f"exporting {spec.name} wrote no {MANIFEST_NAME}")
        timed = ExportTime(
            round(wall_s, 1),
            cached=False,
            finished=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            load_1min=(round(load_start, 2), round(os.getloadavg()[0], 2)),
            torch_threads=_torch_threads(),
        )
        record = {k: v for k, v in timed.to_json().items() if k != "cached"}
        (staging / EXPORT_RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if directory.exists():  # a half-written directory of an older, different layout
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"exported {spec.name} in {timed.wall_s:.0f}s")
    return timed


def _torch_threads() -> int | None:
    try:
        import torch

        return torch.get_num_threads()
    except ImportError:
        return None
