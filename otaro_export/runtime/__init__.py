"""Run exported artifacts: ``load(path) -> Session`` for ``.onnx`` or ``.pte`` (DESIGN.md section 5)."""

from __future__ import annotations

from pathlib import Path

from otaro_export.errors import ArtifactError
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import GenerationStats, Session

__all__ = ["load", "Session", "GenerationStats"]


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


def load_tokenizer(directory: Path, manifest: Manifest):
    tok_dir = directory / manifest.tokenizer
    if not tok_dir.is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tok_dir))


def load(path: str | Path, **options) -> Session:
    """Load an exported artifact (its file or its directory) once; run it at any precision."""
    directory, manifest = _resolve(path)
    tokenizer = load_tokenizer(directory, manifest)
    if manifest.target == "onnx":
        from otaro_export.runtime.onnx_session import OnnxSession

        return OnnxSession(directory, manifest, tokenizer, **options)
    if manifest.target == "executorch":
        from otaro_export.runtime.executorch_session import ExecuTorchSession

        return ExecuTorchSession(directory, manifest, tokenizer, **options)
    raise ArtifactError(f"unknown target {manifest.target!r}")
