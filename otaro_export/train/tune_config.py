"""Settings of one tuning run, with the method presets (OTARo and its baselines)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from otaro_export.errors import OtaroError
from otaro_export.reconstruction import FLOOR_POLICIES
from otaro_export.sefp import SUPPORTED_BITS, check_bits
from otaro_export.train.bps import DEFAULT_LAMBDA
from otaro_export.train.laa import DEFAULT_INTERVAL, DEFAULT_LOW_BITS
from otaro_export.train.lr_schedule import SCHEDULES

#: method -> (bit sampler, LAA on by default)
METHODS = {
    "otaro": ("bps", True),  # the paper: BPS + LAA
    "bps": ("bps", False),  # ablation: BPS without LAA
    "uniform": ("uniform", False),  # baseline: uniform random bit-width per step
    "qat": ("fixed", False),  # baseline: single-precision QAT at qat_bits
    "ptq": (None, False),  # baseline: no tuning at all
}
OPTIMIZERS = ("sgd", "adamw")
LOSSES = ("kl", "ce")
SCOPES = ("linears", "all")
#: how a run under torchrun spreads over its ranks: replicated weights (DDP) or sharded ones (FSDP2)
PARALLEL = ("ddp", "fsdp")
DEFAULT_STEPS = 200
CONFIG_FILE = "tune_config.json"


def _choices(name: str, values) -> type[Enum]:
    """A str Enum of ``values`` (the CLI's choices), built from the tuple that validation uses."""
    return Enum(name, {v: v for v in values}, type=str)


Method = _choices("Method", METHODS)
Optimizer = _choices("Optimizer", OPTIMIZERS)
Loss = _choices("Loss", LOSSES)
Scope = _choices("Scope", SCOPES)
LRSchedule = _choices("LRSchedule", SCHEDULES)
Parallel = _choices("Parallel", PARALLEL)
FloorPolicy = _choices("FloorPolicy", FLOOR_POLICIES)

#: settings a resumed run may change: they do not shape the data, the model or the optimisation path
RESUME_OVERRIDES = ("steps", "parallel", "device", "activation_checkpointing")


class TuneConfigError(OtaroError, ValueError):
    """A tuning setting is invalid, or a saved run's settings cannot be read."""


@dataclass
class TuneConfig:
    model: str = "default"
    data: str | None = None  # None: data-free self-distillation
    method: str = "otaro"
    steps: int = DEFAULT_STEPS
    batch_size: int = 4
    seq_len: int = 256
    num_samples: int = 64  # self-distillation answers to generate (or max samples read from data)
    gen_tokens: int = 96
    optimizer: str = "sgd"
    lr: float = 1e-5  # the paper's SGD default
    lr_schedule: str = "constant"  # the paper's setting; "cosine": warm-up then cosine decay to 0
    warmup_steps: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    bits: tuple[int, ...] = SUPPORTED_BITS
    bps_lambda: float = DEFAULT_LAMBDA
    laa: bool | None = None  # None: the method's default
    laa_bits: tuple[int, ...] = DEFAULT_LOW_BITS
    laa_interval: int = DEFAULT_INTERVAL
    laa_reduce: str = "mean"
    qat_bits: int = 8
    anchor_bits: int | None = None  # also score this precision on every step (not in the paper)
    anchor_weight: float = 1.0
    loss: str = "kl"
    train_scope: str = "linears"
    quantize_lm_head: bool = False
    reconstruction: str = "floor"  # the rule fake-quant trains through (docs/QUALITY.md); CLI default: the export's
    exponent_rule: str = "floor"
    layer_floors: str = "none"  # "auto": the export's floor plan of the untuned model; CLI default: the export's
    int8_activations: int = 0  # int8 activations at E5M3..E5M<this> (docs/FORMAT.md §9); CLI default: ONNX export's
    seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"
    parallel: str = "ddp"  # only used under torchrun (WORLD_SIZE set)
    activation_checkpointing: bool = False  # recompute each decoder block in backward: less memory, ~1/3 more compute
    teacher_cache_bytes: int = 3 * 2**30  # FP teacher log-probs up to this size are computed once; else a frozen copy
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bits = tuple(check_bits(b) for b in self.bits)
        self.laa_bits = tuple(check_bits(b) for b in self.laa_bits)
        check_bits(self.qat_bits)
        if self.anchor_bits is not None:
            self.anchor_bits = check_bits(self.anchor_bits)
        from otaro_export.sefp import EXPONENT_RULES, RECONSTRUCTION_RULES

        if self.reconstruction not in RECONSTRUCTION_RULES or self.exponent_rule not in EXPONENT_RULES:
            raise TuneConfigError(
                f"reconstruction must be one of {list(RECONSTRUCTION_RULES)} and exponent_rule one of "
                f"{list(EXPONENT_RULES)}, got {self.reconstruction!r} / {self.exponent_rule!r}"
            )
        from otaro_export.activation_quant import check_max_bits

        try:
            check_max_bits(self.int8_activations)
        except ValueError as exc:
            raise TuneConfigError(
                f"int8_activations must be 0 (float activations) or a precision 3..8, got {self.int8_activations!r}"
            ) from exc
        if not self.anchor_weight >= 0:
            raise TuneConfigError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        for name, value, allowed in (
            ("method", self.method, tuple(METHODS)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("loss", self.loss, LOSSES),
            ("train_scope", self.train_scope, SCOPES),
            ("lr_schedule", self.lr_schedule, SCHEDULES),
            ("parallel", self.parallel, PARALLEL),
            ("layer_floors", self.layer_floors, FLOOR_POLICIES),
        ):
            if value not in allowed:
                raise TuneConfigError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if len(set(self.bits)) != len(self.bits):
            raise TuneConfigError(f"bits repeat: {list(self.bits)}")
        if not (self.bps_lambda >= 0 and self.bps_lambda != float("inf")):
            raise TuneConfigError(f"bps_lambda must be a finite number >= 0, got {self.bps_lambda}")
        if not isinstance(self.laa_interval, int) or self.laa_interval < 1:
            raise TuneConfigError(f"laa_interval must be an integer >= 1, got {self.laa_interval!r}")
        if self.steps < 0:
            raise TuneConfigError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1 or self.seq_len < 2 or self.num_samples < 1:
            raise TuneConfigError("batch_size and num_samples must be >= 1 and seq_len >= 2")
        if not self.lr > 0:
            raise TuneConfigError(f"learning rate must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise TuneConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.checkpoint_every < 1:
            raise TuneConfigError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    @property
    def sampler_kind(self) -> str | None:
        return METHODS[self.method][0]

    @property
    def uses_laa(self) -> bool:
        return METHODS[self.method][1] if self.laa is None else bool(self.laa)

    @property
    def total_steps(self) -> int:
        return 0 if self.method == "ptq" else self.steps

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bits"], d["laa_bits"] = list(self.bits), list(self.laa_bits)
        return d

    @staticmethod
    def from_dict(d: dict) -> TuneConfig:
        known = {f.name for f in dataclasses.fields(TuneConfig)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise TuneConfigError(f"unknown tuning settings {unknown}")
        d = dict(d)
        for key in ("bits", "laa_bits"):
            if key in d:
                d[key] = tuple(d[key])
        return TuneConfig(**d)


def resume_config(output: str | Path, **overrides) -> TuneConfig:
    """The settings of the run saved in ``output``, with the ``RESUME_OVERRIDES`` given (None: keep the saved one).

    ``steps`` may extend a run; ``parallel`` and ``device`` let a run continue
    on other hardware or another number of ranks (the checkpoint is resharded).
    """
    unknown = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if unknown:
        raise TuneConfigError(
            f"a resumed run keeps its saved settings; only {list(RESUME_OVERRIDES)} may change, not {unknown}"
        )
    saved = Path(output) / CONFIG_FILE
    if not saved.is_file():
        raise TuneConfigError(f"nothing to resume: {saved} does not exist")
    try:
        settings = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TuneConfigError(f"{saved} is unreadable or corrupt ({exc})") from exc
    if not isinstance(settings, dict):
        raise TuneConfigError(f"{saved} is corrupt: expected a JSON object of settings")
    settings.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TuneConfig.from_dict(settings)
    except TypeError as exc:  # a hand-edited file with a wrong value type
        raise TuneConfigError(f"{saved} holds an invalid setting ({exc})") from exc
