"""Export output handling: --output checked first, staged writes, user files never deleted.

The target writer is replaced by a fake that writes a few bytes, so these tests
exercise the driver (export/pipeline.py + export/output_dir.py) in milliseconds.
"""

import json
import os
import sys
import types

import pytest

from otaro_export.errors import OtaroError
from otaro_export.export.model_info import model_info
from otaro_export.export.output_dir import OutputError, check_output
from otaro_export.export.pipeline import ExportOptions, export_model
from otaro_export.manifest import Manifest
from otaro_export.testing import tiny_causal_lm


@pytest.fixture(scope="module")
def loaded():
    return tiny_causal_lm()


@pytest.fixture
def writer(monkeypatch):
    """A fake ExecuTorch writer: model.pte (+ listed data files); ``fail`` raises half-way."""
    state = types.SimpleNamespace(content=b"program-1", data_files=[], fail=False, calls=0)

    def export_executorch(loaded, options, out, log):
        state.calls += 1
        (out / "model.pte").write_bytes(state.content)
        for name in state.data_files:
            (out / name).write_bytes(b"weights")
        if state.fail:
            raise RuntimeError("writer failed")
        return Manifest(
            target="executorch",
            artifact="model.pte",
            kernels="portable",
            kernel_library=None,
            quantized_layers=[],
            inputs=["input_ids", "cache_position"],
            outputs=["logits"],
            model=model_info(loaded.model, loaded.source, 32),
            extra={"data_files": list(state.data_files)},
        )

    module = types.ModuleType("otaro_export.export.executorch_export")
    module.export_executorch = export_executorch
    monkeypatch.setitem(sys.modules, "otaro_export.export.executorch_export", module)
    return state


def export(out, loaded, force=False):
    return export_model(ExportOptions(target="executorch", output=out, force=force), log=lambda _: None, loaded=loaded)


def tree(directory):
    return sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())


def test_fresh_export_and_load_check(tmp_path, writer, loaded):
    out = tmp_path / "a" / "b"
    path = export(out, loaded)
    assert path == out / "manifest.json"
    assert "model.pte" in tree(out) and "tokenizer/tokenizer.json" in tree(out)
    assert not [p for p in out.iterdir() if p.name.startswith(".otaro-export-tmp-")]
    m = Manifest.load(out)
    assert set(m.files) == set(tree(out)) - {"manifest.json"}
    m.verify_files(out)


def test_output_is_checked_before_any_work(tmp_path, writer, monkeypatch):
    monkeypatch.setattr("otaro_export.models.load_model", lambda *_: pytest.fail("loaded the model"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file; give a directory"):
        export(tmp_path / "file", None)
    with pytest.raises(OutputError, match="file, not a directory"):
        export(tmp_path / "file" / "sub", None)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    with pytest.raises(OutputError, match="not written by otaro-export.*--force"):
        export(foreign, None)
    assert tree(foreign) == ["thesis.tex"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output(tmp_path, writer):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="no permission to write"):
        check_output(locked / "out")


def test_force_writes_into_a_foreign_directory_and_touches_nothing_else(tmp_path, writer, loaded):
    out = tmp_path / "mine"
    (out / "tokenizer").mkdir(parents=True)
    (out / "tokenizer" / "notes.txt").write_text("keep me")
    (out / "README").write_text("keep me too")
    export(out, loaded, force=True)
    assert (out / "tokenizer" / "notes.txt").read_text() == "keep me" and (out / "README").exists()
    assert "tokenizer/notes.txt" not in Manifest.load(out).files


def test_re_export_replaces_only_its_own_files(tmp_path, writer, loaded):
    out = tmp_path / "out"
    writer.data_files = ["model.ptd"]
    export(out, loaded)
    (out / "tokenizer" / "notes.txt").write_text("keep me")
    (out / "notes.md").write_text("keep me")
    writer.content, writer.data_files = b"program-2", []
    export(out, loaded)  # no --force needed: the directory holds our manifest
    assert (out / "model.pte").read_bytes() == b"program-2"
    assert not (out / "model.ptd").exists()  # the previous export's file, no longer written
    assert (out / "tokenizer" / "notes.txt").read_text() == "keep me" and (out / "notes.md").exists()
    Manifest.load(out).verify_files(out, use_cache=False)


def test_a_failed_export_leaves_the_directory_as_it_was(tmp_path, writer, loaded):
    out = tmp_path / "out"
    export(out, loaded)
    before = {name: (out / name).read_bytes() for name in tree(out)}
    writer.content, writer.fail = b"half-written", True
    with pytest.raises(RuntimeError, match="writer failed"):
        export(out, loaded)
    assert {name: (out / name).read_bytes() for name in tree(out)} == before
    assert not [p for p in out.iterdir() if p.name.startswith(".otaro-export-tmp-")]
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError):
        export(fresh, loaded)
    assert not fresh.exists()  # we made it, nothing landed: gone again


def test_user_file_in_the_way_needs_force(tmp_path, writer, loaded):
    out = tmp_path / "out"
    export(out, loaded)
    (out / "model.ptd").write_text("the user's own file")
    writer.data_files = ["model.ptd"]
    with pytest.raises(OutputError, match="would overwrite .*model.ptd.*--force"):
        export(out, loaded)
    assert (out / "model.ptd").read_text() == "the user's own file"
    assert Manifest.load(out).extra["data_files"] == []  # the old export is still whole
    Manifest.load(out).verify_files(out, use_cache=False)


def test_staging_of_a_dead_export_is_removed(tmp_path, writer, loaded):
    out = tmp_path / "out"
    export(out, loaded)
    dead = out / ".otaro-export-tmp-999999999-dead"  # no such process
    live = out / f".otaro-export-tmp-{os.getppid()}-live"
    for d in (dead, live):
        d.mkdir()
        (d / "model.pte").write_bytes(b"partial")
    export(out, loaded)
    assert not dead.exists() and live.exists()


def test_manifest_pointing_outside_never_deletes_there(tmp_path, writer, loaded):
    out = tmp_path / "out"
    export(out, loaded)
    victim = tmp_path / "victim.txt"
    victim.write_text("x")
    data = json.loads((out / "manifest.json").read_text())
    data["files"]["../victim.txt"] = {"size": 1, "sha256": "0" * 64}
    (out / "manifest.json").write_text(json.dumps(data))
    export(out, loaded)
    assert victim.exists()


def test_invalid_options_fail_before_the_output_is_touched(tmp_path, writer):
    with pytest.raises(OtaroError, match="--max-seq-len"):
        export_model(ExportOptions(target="executorch", output=tmp_path / "x", max_seq_len=1))
    assert not (tmp_path / "x").exists()
