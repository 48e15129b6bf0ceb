"""The tuning experiment's round-to-nearest reference row (a diagnostic quantizer, not the format)."""

import importlib.util
from pathlib import Path

import torch

from otaro_export import sefp
from otaro_export.train.fake_quant import ste_fake_quantize

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "tune_experiment.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("tune_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_rounds_to_the_nearest_level_and_restores_truncation():
    script = _load_script()
    torch.manual_seed(0)
    w = torch.randn(8, 130) * 0.05
    step = sefp.exact_pow2(sefp.shared_exponents(sefp._grouped(w)).to(torch.int32) - 2)  # E5M3 level spacing
    step = step.repeat_interleave(sefp.GROUP_SIZE, dim=1)[:, : w.shape[1]]
    truncated = ste_fake_quantize(w, 3)
    with script.round_to_nearest_quantizer():
        rounded = ste_fake_quantize(w, 3)
    assert torch.equal(ste_fake_quantize(w, 3), truncated)  # the real quantizer is back
    # Truncation moves every |w| toward zero by less than one step; rounding moves it by at most
    # half a step either way, except above the top level (7.5 steps) where it clamps to 7.
    t_err, r_err = (w.abs() - truncated.abs()) / step, (w.abs() - rounded.abs()) / step
    assert (t_err >= 0).all() and (t_err < 1).all()
    inside = w.abs() < 7.5 * step
    assert (r_err[inside].abs() <= 0.5).all()
    assert (r_err[~inside] > 0.5).all() and (rounded.abs()[~inside] == 7 * step[~inside]).all()
    assert (rounded.abs() > truncated.abs()).any()  # it really rounds some values up
    assert r_err.abs().mean() < t_err.mean()
