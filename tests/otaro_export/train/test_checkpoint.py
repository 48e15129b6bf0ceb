import json
import os

import pytest
import torch

from otaro_export.testing import tiny_causal_lm
from otaro_export.train.checkpoint import (
    LATEST_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    OutputLock,
    load_tuned_weights,
    remove_leftovers,
    resolve_checkpoint,
    save_checkpoint,
)

Q = "model.layers.0.self_attn.q_proj.weight"


def _tuned(tiny):
    return {Q: torch.full_like(tiny.model.get_parameter(Q), 0.25)}


def test_save_resolve_and_load_into_a_plain_model(tiny, tmp_path):
    path = save_checkpoint(tmp_path, 7, _tuned(tiny), {"step": 7}, {"model_source": "tiny"})
    assert path.name == "ckpt-000007" and resolve_checkpoint(tmp_path) == path
    assert resolve_checkpoint(path) == path  # a checkpoint directory itself works too
    fresh = tiny_causal_lm(seed=1).model
    untouched = fresh.get_parameter("model.layers.1.mlp.up_proj.weight").clone()
    assert load_tuned_weights(fresh, tmp_path) == [Q]
    assert torch.equal(fresh.get_parameter(Q), torch.full_like(fresh.get_parameter(Q), 0.25))
    assert torch.equal(fresh.get_parameter("model.layers.1.mlp.up_proj.weight"), untouched)


def test_latest_moves_and_old_checkpoints_are_pruned(tiny, tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, _tuned(tiny), {}, {}, keep=2)
    assert (tmp_path / LATEST_FILE).read_text().strip() == "ckpt-000003"
    assert sorted(p.name for p in tmp_path.glob("ckpt-*")) == ["ckpt-000002", "ckpt-000003"]
    save_checkpoint(tmp_path, 3, _tuned(tiny), {}, {})  # re-saving a step replaces it
    assert resolve_checkpoint(tmp_path).name == "ckpt-000003"


def test_interrupted_write_leaves_the_previous_checkpoint_in_force(tiny, tmp_path):
    save_checkpoint(tmp_path, 1, _tuned(tiny), {}, {})
    (tmp_path / ".tmp-ckpt-000002-999").mkdir()  # a write killed before its rename
    (tmp_path / ".tmp-ckpt-000002-999" / WEIGHTS_FILE).write_bytes(b"partial")
    assert resolve_checkpoint(tmp_path).name == "ckpt-000001"
    load_tuned_weights(tiny.model, tmp_path)


def test_missing_and_wrong_directories(tiny, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_tuned_weights(tiny.model, tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no tuned checkpoint"):
        load_tuned_weights(tiny.model, tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_tuned_weights(tiny.model, tmp_path / "f")
    (tmp_path / LATEST_FILE).write_text("ckpt-000009\n")
    with pytest.raises(CheckpointError, match="incomplete"):
        load_tuned_weights(tiny.model, tmp_path)


def test_corrupt_weights_are_detected(tiny, tmp_path):
    path = save_checkpoint(tmp_path, 1, _tuned(tiny), {}, {})
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor data: only the checksum can tell
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    before = tiny.model.get_parameter(Q).clone()
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tuned_weights(tiny.model, tmp_path)
    assert torch.equal(tiny.model.get_parameter(Q), before)
    (path / "meta.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_tuned_weights(tiny.model, tmp_path)
    (path / "meta.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        load_tuned_weights(tiny.model, tmp_path)


def test_truncated_weights_file(tiny, tmp_path):
    path = save_checkpoint(tmp_path, 1, _tuned(tiny), {}, {})
    (path / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes()[:40])
    meta = json.loads((path / "meta.json").read_text())
    meta.pop("weights_sha256")  # no checksum: the safetensors reader must still refuse it cleanly
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_tuned_weights(tiny.model, tmp_path)


def test_mismatched_model_is_refused_without_changes(tiny, tmp_path):
    save_checkpoint(tmp_path, 1, _tuned(tiny), {}, {"model_source": "tiny-llama"})
    other = tiny_causal_lm(hidden_size=128, num_attention_heads=4).model
    before = other.get_parameter(Q).clone()
    with pytest.raises(CheckpointError, match=r"shape .*tiny-llama"):
        load_tuned_weights(other, tmp_path)
    assert torch.equal(other.get_parameter(Q), before)
    qwen_dir = tmp_path / "other"
    save_checkpoint(qwen_dir, 1, {"transformer.h.0.weight": torch.zeros(2)}, {}, {})
    with pytest.raises(CheckpointError, match="not in the model"):
        load_tuned_weights(tiny.model, qwen_dir)
    save_checkpoint(tmp_path / "nan", 1, {Q: torch.full_like(before[:64, :64], float("nan"))}, {}, {})
    with pytest.raises(CheckpointError, match="NaN"):
        load_tuned_weights(tiny.model, tmp_path / "nan")


def test_leftovers_of_interrupted_saves_are_found_and_removed(tiny, tmp_path):
    save_checkpoint(tmp_path, 1, _tuned(tiny), {}, {})
    (tmp_path / ".tmp-ckpt-000002-999" / "state").mkdir(parents=True)  # killed while writing
    (tmp_path / ".old-ckpt-000001-998").mkdir()  # killed while replacing a re-saved step
    (tmp_path / ".LATEST.tmp-997").write_text("ckpt-000002\n")
    assert remove_leftovers(tmp_path) == [".tmp-ckpt-000002-999", ".old-ckpt-000001-998", ".LATEST.tmp-997"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-000001"]
    assert resolve_checkpoint(tmp_path).name == "ckpt-000001"


def test_a_run_directory_has_one_writer(tmp_path):
    with OutputLock(tmp_path):
        with pytest.raises(CheckpointError, match=rf"in use by another 'otaro tune' \(pid {os.getpid()}\)"):
            OutputLock(tmp_path).acquire()
    with OutputLock(tmp_path):  # released on exit
        pass
