import json

import pytest

from otaro_export.errors import InvalidBitsError
from otaro_export.train.tune_config import (
    CONFIG_FILE,
    METHODS,
    Loss,
    LRSchedule,
    Method,
    Optimizer,
    Parallel,
    Scope,
    TuneConfig,
    TuneConfigError,
    resume_config,
)


def test_method_presets():
    assert (TuneConfig(method="otaro").sampler_kind, TuneConfig(method="otaro").uses_laa) == ("bps", True)
    assert (TuneConfig(method="bps").sampler_kind, TuneConfig(method="bps").uses_laa) == ("bps", False)
    assert TuneConfig(method="uniform", laa=True).uses_laa  # LAA can be added to any sampler
    assert TuneConfig(method="qat").sampler_kind == "fixed"
    assert TuneConfig(method="ptq", steps=100).total_steps == 0


def test_round_trip_and_bad_settings():
    cfg = TuneConfig(method="bps", bits=(3, 5, 8), lr=0.01)
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (
        dict(method="magic"),
        dict(optimizer="lion"),
        dict(loss="mse"),
        dict(steps=-1),
        dict(lr=0.0),
        dict(lr_schedule="linear"),
        dict(warmup_steps=-1),
        dict(anchor_weight=-1.0),
    ):
        with pytest.raises(ValueError):
            TuneConfig(**bad)
    with pytest.raises(InvalidBitsError):
        TuneConfig(bits=(3, 9))
    with pytest.raises(InvalidBitsError):
        TuneConfig(anchor_bits=9)
    assert TuneConfig.from_dict(TuneConfig(anchor_bits=8).to_dict()).anchor_bits == 8
    with pytest.raises(ValueError, match="unknown tuning settings"):
        TuneConfig.from_dict({**cfg.to_dict(), "warmup": 3})


def test_cli_choices_are_the_validated_ones():
    assert [m.value for m in Method] == list(METHODS)
    assert [p.value for p in Parallel] == ["ddp", "fsdp"]
    for enum, field in ((Optimizer, "optimizer"), (Loss, "loss"), (Scope, "train_scope"), (LRSchedule, "lr_schedule")):
        for choice in enum:
            assert getattr(TuneConfig(**{field: choice.value}), field) == choice.value
    for bad in (dict(parallel="zero3"), dict(bits=(3, 3)), dict(bps_lambda=-1.0), dict(laa_interval=0)):
        with pytest.raises(TuneConfigError):
            TuneConfig(**bad)


def test_resume_config_keeps_the_saved_settings_but_steps_parallel_device(tmp_path):
    with pytest.raises(TuneConfigError, match="nothing to resume"):
        resume_config(tmp_path)
    saved = TuneConfig(method="bps", steps=10, lr=0.01, parallel="ddp")
    (tmp_path / CONFIG_FILE).write_text(json.dumps(saved.to_dict()))
    assert resume_config(tmp_path) == saved
    again = resume_config(tmp_path, steps=20, parallel="fsdp", device=None)
    assert (again.steps, again.parallel, again.device, again.lr) == (20, "fsdp", "cpu", 0.01)
    with pytest.raises(TuneConfigError, match="only"):
        resume_config(tmp_path, lr=1.0)
    old = saved.to_dict()
    del old["parallel"]  # written before --parallel existed
    (tmp_path / CONFIG_FILE).write_text(json.dumps(old))
    assert resume_config(tmp_path).parallel == "ddp"
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**old, "steps": "ten"}))
    with pytest.raises(TuneConfigError, match="invalid setting"):
        resume_config(tmp_path)
    (tmp_path / CONFIG_FILE).write_text("{cut")
    with pytest.raises(TuneConfigError, match="corrupt"):
        resume_config(tmp_path)


def test_floors_and_int8_activations_are_validated_and_fixed_for_a_resumed_run(tmp_path):
    from otaro_export.train.tune_config import FloorPolicy

    assert [p.value for p in FloorPolicy] == ["auto", "none"]
    # the library default is the paper's (no floors, float activations); the CLI passes the export's
    assert (TuneConfig().layer_floors, TuneConfig().int8_activations) == ("none", 0)
    cfg = TuneConfig(layer_floors="auto", int8_activations=4)
    assert TuneConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(TuneConfigError, match="layer_floors must be one of"):
        TuneConfig(layer_floors="some")
    for bad in (2, 9, True, "4"):
        with pytest.raises(TuneConfigError, match="int8_activations must be 0"):
            TuneConfig(int8_activations=bad)
    (tmp_path / CONFIG_FILE).write_text(json.dumps(cfg.to_dict()))
    for change in (dict(layer_floors="none"), dict(int8_activations=0)):
        with pytest.raises(TuneConfigError, match="keeps its saved settings"):
            resume_config(tmp_path, **change)
    old = cfg.to_dict()
    del old["layer_floors"], old["int8_activations"]  # a run saved before the options existed trained without them
    (tmp_path / CONFIG_FILE).write_text(json.dumps(old))
    assert (resume_config(tmp_path).layer_floors, resume_config(tmp_path).int8_activations) == ("none", 0)
