"""Where an export writes: ``--output`` checked before any work, files staged, moved in at the end.

An export runs for minutes; a bad ``--output`` must fail in milliseconds, and
a failed or killed export must leave the directory as it was. So:

* :func:`stage_output` checks ``--output`` first (not a file, writable, and
  either empty, or an earlier otaro-export output (it has our
  ``manifest.json``), or ``force``), then creates a hidden staging directory
  inside it, on the same filesystem, so that the final moves are renames;
* the writers write only into the staging directory;
* :meth:`Staging.commit` moves each new file into place, deletes files that
  the previous export's manifest recorded and this one no longer writes, and
  replaces ``manifest.json`` last. A file the previous export did not write
  (e.g. ``tokenizer/notes.txt``) is never deleted; one that the new export
  would overwrite is an error without ``force``;
* staging directories of exports that died (their process is gone) are
  removed at the next export into the same directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from pathlib import Path

from otaro_export.errors import ArtifactError, OtaroError
from otaro_export.manifest import MANIFEST_NAME, Manifest, inside

_STAGING_PREFIX = ".otaro-export-tmp-"


class OutputError(OtaroError, ValueError):
    """``--output`` cannot receive the export (a file, unwritable, someone else's files)."""


def _staging_pid(name: str) -> int | None:
    if not name.startswith(_STAGING_PREFIX):
        return None
    pid = name[len(_STAGING_PREFIX) :].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def _previous_files(output: Path) -> set[str] | None:
    """Files the export already in ``output`` wrote (per its manifest), or None if it holds no such manifest."""
    try:
        data = json.loads((output / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not str(data.get("created_by", "")).startswith("otaro-export"):
        return None
    names = set()
    extra = data.get("extra") if isinstance(data.get("extra"), dict) else {}
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    for name in [data.get("artifact"), *(extra.get("data_files") or []), *files]:
        try:
            inside(output, name, output / MANIFEST_NAME)  # never trust a manifest to point elsewhere
        except ArtifactError:
            continue
        names.add(name)
    artifact = data.get("artifact")
    if isinstance(artifact, str) and str(data.get("target")) == "onnx" and not files:
        names.add(f"{artifact}.data")  # manifests without ``files``: the ONNX writer's one data file
    return names


def check_output(output: Path, force: bool = False) -> set[str]:
    """Fail fast, with one line, if ``output`` cannot receive an export; returns the files a previous export wrote."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file; give a directory")
    previous: set[str] = set()
    if output.is_dir():
        entries = [e for e in output.iterdir() if _staging_pid(e.name) is None]
        found = _previous_files(output)
        if entries and found is None and not force:
            raise OutputError(
                f"--output {output} is not empty and was not written by otaro-export (no manifest.json of ours): "
                "pass --force to export into it anyway (files of the same names are replaced, nothing else is "
                "touched), or choose a new or empty directory"
            )
        previous = found or set()
        existing = output
    else:
        existing = output.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            raise OutputError(f"--output {output}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"--output {output}: no permission to write in {existing}")
    return previous


class Staging:
    """A hidden directory inside ``output`` that an export writes into; :meth:`commit` moves its files in."""

    def __init__(self, output: Path, force: bool = False):
        self.output = Path(output)
        self.force = force
        self.previous = check_output(self.output, force)
        self.created_output = not self.output.exists()
        try:
            self.output.mkdir(parents=True, exist_ok=True)
            _remove_dead_stagings(self.output)
            self.path = self.output / f"{_STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
            self.path.mkdir()
        except OSError as exc:
            raise OutputError(f"--output {self.output}: cannot create a directory there ({exc.strerror})") from exc
        self.committed = False

    def _new_files(self) -> list[str]:
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if not p.is_dir())

    def _check_conflicts(self, names: list[str]) -> None:
        for name in names:
            dest = self.output / name
            for parent in list(Path(name).parents)[:-1]:
                if (self.output / parent).exists() and not (self.output / parent).is_dir():
                    raise OutputError(f"cannot write {dest}: {self.output / parent} is a file")
            if dest.is_dir() and not dest.is_symlink():
                raise OutputError(f"cannot write {dest}: a directory of that name is in the way")
            if (dest.exists() or dest.is_symlink()) and name not in self.previous and not self.force:
                raise OutputError(
                    f"the export would overwrite {dest}, which the previous export did not write: move it away or "
                    "pass --force"
                )

    def commit(self, manifest: Manifest) -> Path:
        """Move the staged files into ``output`` (``manifest.json`` last); returns the manifest's path."""
        from otaro_export.integrity import remember

        names = [n for n in self._new_files() if n != MANIFEST_NAME]
        if not (self.path / MANIFEST_NAME).is_file():
            raise OtaroError("internal error: the export staged no manifest.json")
        self._check_conflicts(names)
        for name in names:
            dest = self.output / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.path / name, dest)
        for name in sorted(self.previous - set(names) - {MANIFEST_NAME}, reverse=True):
            stale = self.output / name
            if stale.is_file() or stale.is_symlink():
                stale.unlink()  # the previous export's own file, not written this time
            for parent in Path(name).parents:
                if parent != Path(".") and (self.output / parent).is_dir():
                    try:
                        (self.output / parent).rmdir()  # only if now empty: a user's file keeps it
                    except OSError:
                        break
        os.replace(self.path / MANIFEST_NAME, self.output / MANIFEST_NAME)
        self.committed = True
        self.discard()
        # the files were just hashed: the first load need not hash them again
        remember((self.output / name, record["sha256"]) for name, record in manifest.files.items())
        return self.output / MANIFEST_NAME

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if not self.committed and self.created_output:
            try:
                self.output.rmdir()  # we made it and nothing else landed there
            except OSError:
                pass

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, *exc) -> None:
        if not self.committed:
            self.discard()


def _remove_dead_stagings(output: Path) -> None:
    for entry in output.iterdir():
        pid = _staging_pid(entry.name)
        if pid is not None and entry.is_dir() and not _alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
