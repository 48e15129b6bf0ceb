import pytest

from otaro_export.errors import InvalidBitsError
from otaro_export.train.tune_config import TuneConfig


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
