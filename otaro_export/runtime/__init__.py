"""Run exported artifacts: ``load(path) -> Session`` for ``.onnx`` or ``.pte`` (docs/FORMAT.md §8).

Before any byte of an artifact reaches a runtime, :func:`load` checks its
manifest (fields, paths inside the directory, kernel library from a fixed set)
and every file against the digests recorded at export (see
:mod:`otaro_export.integrity`). Nothing in an artifact is ever executed: the
tokenizer loads with ``trust_remote_code=False`` and a tokenizer directory
that ships code is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from otaro_export.errors import ArtifactError
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import GenerationStats, Session

__all__ = ["load", "load_tokenizer", "Session", "GenerationStats"]


def _resolve(path: str | Path) -> tuple[Path, Manifest]:
    """Accept the artifact file or the export directory; return (directory, manifest)."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{p} does not exist")
    directory = p if p.is_dir() else p.parent
    manifest = Manifest.load(directory)
    if p.is_file() and p.name != manifest.artifact:
        raise ArtifactError(f"{p.name} is not the artifact named in {directory}/manifest.json ({manifest.artifact})")
    if not (directory / manifest.artifact).is_file():
        raise ArtifactError(f"the manifest names {manifest.artifact}, which is missing from {directory}")
    return directory, manifest


def _refuse_code(tok_dir: Path) -> None:
    """A tokenizer that needs code from the artifact (``auto_map``, ``*.py``) is refused, never run."""
    code = sorted(p.name for p in tok_dir.rglob("*.py"))
    for name in ("tokenizer_config.json", "config.json"):
        try:
            data = json.loads((tok_dir / name).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("auto_map"):
            code.append(f"{name}: auto_map")
    if code:
        raise ArtifactError(
            f"the tokenizer in {tok_dir} asks to run code shipped with the artifact ({', '.join(code)}); "
            "otaro-export never runs code from an artifact: re-export it with a standard tokenizer"
        )


def load_tokenizer(directory: Path, manifest: Manifest):
    """The artifact's tokenizer, or None if it has none. Never runs code from the artifact."""
    from otaro_export.manifest import inside

    tok_dir = inside(Path(directory), manifest.tokenizer, Path(directory) / "manifest.json")
    if not tok_dir.is_dir():
        return None
    _refuse_code(tok_dir)
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(tok_dir), trust_remote_code=False, local_files_only=True)
    except Exception as exc:  # transformers raises ValueError/OSError/KeyError/... for a broken tokenizer
        raise ArtifactError(f"cannot load the tokenizer in {tok_dir} ({type(exc).__name__}: {exc})") from exc


def load(path: str | Path, *, verify: bool = True, **options) -> Session:
    """Load an exported artifact (its file or its directory) once; run it at any precision.

    ``verify`` checks every file against the manifest's digests first (cached
    per unchanged file, so a repeated load costs a ``stat``); ``verify=False``
    skips that for artifacts you checked yourself (``otaro verify``).
    ``options`` go to the backend (e.g. ``num_threads``).
    """
    directory, manifest = _resolve(path)
    if verify:
        manifest.verify_files(directory)
    tokenizer = load_tokenizer(directory, manifest)
    if manifest.target == "onnx":
        from otaro_export.runtime.onnx_session import OnnxSession

        return OnnxSession(directory, manifest, tokenizer, **options)
    if manifest.target == "executorch":
        from otaro_export.runtime.executorch_session import ExecuTorchSession

        return ExecuTorchSession(directory, manifest, tokenizer, **options)
    raise ArtifactError(f"unknown target {manifest.target!r}")
