"""Settings of one tuning run, with the method presets (OTARo and its baselines)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

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


@dataclass
class TuneConfig:
    model: str = "default"
    data: str | None = None  # None: data-free self-distillation
    method: str = "otaro"
    steps: int = 200
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
    seed: int = 0
    checkpoint_every: int = 50
    device: str = "cpu"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.bits = tuple(check_bits(b) for b in self.bits)
        self.laa_bits = tuple(check_bits(b) for b in self.laa_bits)
        check_bits(self.qat_bits)
        if self.anchor_bits is not None:
            self.anchor_bits = check_bits(self.anchor_bits)
        if not self.anchor_weight >= 0:
            raise ValueError(f"anchor_weight must be >= 0, got {self.anchor_weight}")
        for name, value, allowed in (
            ("method", self.method, tuple(METHODS)),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("loss", self.loss, LOSSES),
            ("train_scope", self.train_scope, SCOPES),
            ("lr_schedule", self.lr_schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.batch_size < 1 or self.seq_len < 2 or self.num_samples < 1:
            raise ValueError("batch_size and num_samples must be >= 1 and seq_len >= 2")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

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
            raise ValueError(f"unknown tuning settings {unknown}")
        d = dict(d)
        d["bits"], d["laa_bits"] = tuple(d["bits"]), tuple(d["laa_bits"])
        return TuneConfig(**d)
