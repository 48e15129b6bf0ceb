"""Tuning checkpoints: atomic writes, resume state, and loading tuned weights into a plain HF model.

Layout of an ``otaro tune --output DIR``::

    DIR/LATEST                       name of the newest complete checkpoint ("ckpt-000200")
    DIR/ckpt-000200/model.safetensors  tuned float weights (the trained tensors only)
    DIR/ckpt-000200/meta.json          format tag, step, model source, sha256 of the weights
    DIR/ckpt-000200/training_state.pt  bit sampler, LAA counters, RNG, step history (small, replicated)
    DIR/ckpt-000200/state/             optimizer state and LAA gradient buffers (torch.distributed.checkpoint)
    DIR/tune_config.json, DIR/train_samples.json   the run's settings and data

A checkpoint is written to a temporary directory, flushed, renamed into
place, and only then named in ``LATEST`` (replaced atomically): a kill at any
moment leaves the previous checkpoint intact and referenced. A kill leaves the
temporary directory behind; the next run in ``DIR`` removes it (it holds the
directory's lock, so no other run can be writing there).

``model.safetensors`` always holds full tensors (rank 0 gathers them), so export
reads it whatever the number of ranks. ``state/`` is saved by every rank with
torch.distributed.checkpoint (DCP): sharded under FSDP, written once under DDP or
one process; DCP reshards on load, so a run resumes on another number of ranks.
Several nodes need ``DIR`` on a shared filesystem.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from otaro_export.errors import OtaroError

FORMAT = "otaro-tune/1"
WEIGHTS_FILE = "model.safetensors"
META_FILE = "meta.json"
STATE_FILE = "training_state.pt"
SHARDED_DIR = "state"
LATEST_FILE = "LATEST"
LOCK_FILE = ".otaro-tune.lock"
#: what an interrupted save leaves behind (see save_checkpoint)
LEFTOVER_PATTERNS = (".tmp-ckpt-*", ".old-ckpt-*", f".{LATEST_FILE}.tmp-*", ".train_samples.json.tmp")


class CheckpointError(OtaroError, RuntimeError):
    """A tuned checkpoint is missing, corrupt, or does not match the model."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _single_process_is_intended():
    """DCP warns on every save/load without a process group; one process is a normal run here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, path)


def checkpoint_name(step: int) -> str:
    return f"ckpt-{step:06d}"


def save_checkpoint(
    directory: Path,
    step: int,
    weights: dict[str, torch.Tensor],
    training_state: dict,
    meta: dict,
    keep: int = 2,
    sharded: dict | None = None,
    dist=None,
) -> Path:
    """Write checkpoint ``step`` atomically and point ``LATEST`` at it. Returns its path.

    ``sharded``: tensors saved with DCP into ``state/`` (every rank calls this function then;
    ``dist`` is the run's :class:`~otaro_export.train.distributed.DistContext`). Only rank 0
    writes ``weights`` (full tensors), ``training_state`` and ``meta``.
    """
    from safetensors.torch import save_file

    from otaro_export.train.distributed import DistContext

    dist = dist if dist is not None else DistContext()
    directory = Path(directory)
    name = checkpoint_name(step)
    tmp = directory / dist.broadcast_object(f".tmp-{name}-{os.getpid()}")  # one name for all ranks
    if dist.is_main:
        directory.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    dist.barrier()
    if sharded is not None:
        import torch.distributed.checkpoint as dcp

        with _single_process_is_intended():
            dcp.save(sharded, checkpoint_id=str(tmp / SHARDED_DIR), no_dist=not dist.distributed)  # fsyncs its files
    if not dist.is_main:
        dist.barrier()
        return directory / name
    weights_path = tmp / WEIGHTS_FILE
    save_file({k: v.detach().to("cpu").contiguous() for k, v in weights.items()}, str(weights_path))
    torch.save(training_state, tmp / STATE_FILE)
    full_meta = {"format": FORMAT, "step": step, "weights_sha256": _sha256(weights_path), **meta}
    (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2), encoding="utf-8")
    for f in (weights_path, tmp / STATE_FILE, tmp / META_FILE):
        _fsync(f)
    final = directory / name
    if final.exists():  # re-saving a step after a resume: move the old one aside first
        aside = directory / f".old-{name}-{os.getpid()}"
        final.rename(aside)
        tmp.rename(final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        tmp.rename(final)
    _write_text_atomic(directory / LATEST_FILE, name + "\n")
    _prune(directory, keep, final)
    dist.barrier()
    return final


def remove_leftovers(directory: str | Path) -> list[str]:
    """Delete what interrupted saves left in ``directory`` (call it holding :class:`OutputLock`). Returns the names."""
    directory = Path(directory)
    removed = []
    for pattern in LEFTOVER_PATTERNS:
        for path in sorted(directory.glob(pattern)):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed


class OutputLock:
    """An exclusive lock on a run directory (``flock`` on ``.otaro-tune.lock``), held for the whole run.

    A second ``otaro tune`` on the same directory gets a clear error instead of interleaving
    checkpoints with the first, and the holder may delete leftovers of interrupted saves.
    Advisory and per host: on a filesystem without ``flock`` support it locks nothing.
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILE
        self._file = None

    def acquire(self) -> OutputLock:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.path.open("a+", encoding="utf-8")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise CheckpointError(
                f"{self.path.parent} is in use by another 'otaro tune' (pid {holder}); wait for it or choose another --output"
            ) from exc
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing drops the flock
            self._file = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _prune(directory: Path, keep: int, newest: Path) -> None:
    ckpts = sorted(p for p in directory.glob("ckpt-*") if p.is_dir())
    for old in ckpts[:-keep] if keep > 0 else []:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(directory: str | Path) -> Path:
    """The checkpoint directory that ``directory`` names: itself, or the one its ``LATEST`` file names."""
    directory = Path(directory).expanduser()
    if not directory.exists():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint {directory} is not a directory (pass the 'otaro tune --output' directory)")
    if (directory / WEIGHTS_FILE).is_file():
        return directory
    latest = directory / LATEST_FILE
    if latest.is_file():
        name = latest.read_text(encoding="utf-8").strip()
        target = directory / name
        if not name or not (target / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"{latest} names {name!r}, which holds no {WEIGHTS_FILE}: the checkpoint is incomplete"
            )
        return target
    raise CheckpointError(
        f"{directory} holds no tuned checkpoint (no {LATEST_FILE} and no {WEIGHTS_FILE}); "
        "pass the directory written by 'otaro tune --output'"
    )


def has_checkpoint(directory: str | Path) -> bool:
    return (Path(directory) / LATEST_FILE).is_file()


def read_meta(checkpoint: Path) -> dict:
    path = checkpoint / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CheckpointError(f"{checkpoint} has no {META_FILE}: not written by 'otaro tune'") from exc
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is unreadable or corrupt ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} (expected {FORMAT!r})")
    return meta


def read_weights(checkpoint: Path, verify: bool = True) -> dict[str, torch.Tensor]:
    """The tuned tensors of a checkpoint, checked against the sha256 recorded at save time."""
    from safetensors.torch import load_file

    meta = read_meta(checkpoint)
    path = checkpoint / WEIGHTS_FILE
    if verify and meta.get("weights_sha256") and _sha256(path) != meta["weights_sha256"]:
        raise CheckpointError(f"{path} is corrupt: its sha256 does not match the one recorded when it was written")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from exc


def read_sharded(checkpoint: Path, targets: dict) -> bool:
    """Fill ``targets`` (tensors in the layout of this run: plain, or FSDP shards) from ``state/``.

    Every rank calls it. Returns False if the checkpoint has no ``state/`` (written before it existed).
    """
    path = checkpoint / SHARDED_DIR
    if not path.is_dir():
        return False
    import torch.distributed.checkpoint as dcp

    try:
        single = not (torch.distributed.is_available() and torch.distributed.is_initialized())
        with _single_process_is_intended():
            dcp.load(targets, checkpoint_id=str(path), no_dist=single)
    except Exception as exc:  # DCP wraps per-rank failures in its own exception types
        raise CheckpointError(f"{path}: cannot read the optimizer/LAA state ({str(exc).splitlines()[0]})") from exc
    return True


def read_training_state(checkpoint: Path) -> dict:
    path = checkpoint / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_FILE}: it cannot be resumed")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path} is corrupt ({exc})") from exc


def load_tuned_weights(model: torch.nn.Module, directory: str | Path) -> list[str]:
    """Copy the tuned float weights of an ``otaro tune`` output into ``model`` (a plain HF model), in place.

    Every tensor in the checkpoint must name a parameter or buffer of the
    model with the same shape; otherwise nothing is changed and a
    :class:`CheckpointError` says what does not match. Returns the names loaded.
    """
    checkpoint = resolve_checkpoint(directory)
    meta = read_meta(checkpoint)
    weights = read_weights(checkpoint)
    targets = dict(model.named_parameters())
    targets.update(dict(model.named_buffers()))
    unknown = sorted(set(weights) - set(targets))
    if unknown:
        model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match this model ({model_type}): "
            f"{len(unknown)} tensor(s) it holds are not in the model, e.g. {unknown[:3]}; "
            f"it was tuned from {meta.get('model_source', 'an unknown model')!r}"
        )
    for name, tensor in weights.items():
        if tuple(tensor.shape) != tuple(targets[name].shape):
            raise CheckpointError(
                f"checkpoint {checkpoint} does not match this model: {name} has shape {tuple(tensor.shape)} "
                f"in the checkpoint but {tuple(targets[name].shape)} in the model "
                f"(tuned from {meta.get('model_source', 'an unknown model')!r})"
            )
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"checkpoint {checkpoint}: {name} holds NaN or Inf (the tuning run diverged)")
    with torch.no_grad():
        for name, tensor in weights.items():
            targets[name].copy_(tensor.to(targets[name].dtype))
    return sorted(weights)
