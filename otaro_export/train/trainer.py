"""The tuning loop: one SEFP precision per step (BPS/uniform/fixed), KL to the FP teacher, LAA, checkpoints.

Each step: the sampler picks ``k``; every selected linear runs with its float
master weight fake-quantized to E5Mk (STE backward); the loss is the KL
divergence to the untuned FP model on the batch's scored tokens (or the
next-token cross-entropy with ``loss="ce"``); the sampler sees the loss; the
update policy (LAA or immediate) decides when the optimizer steps.

Determinism: the batch of step ``s`` is a pure function of (seed, s), the
samplers and LAA carry their whole state in checkpoints, and the model runs
in eval mode (no dropout), so a resumed run reproduces an uninterrupted one
bit for bit on CPU.
"""

from __future__ import annotations

import copy
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from otaro_export.errors import OtaroError
from otaro_export.models import LoadedModel, load_model
from otaro_export.train import checkpoint as ckpt
from otaro_export.train.bit_samplers import FixedSampler, UniformSampler
from otaro_export.train.bps import BPSSampler
from otaro_export.train.fake_quant import attach_fake_quant, fake_quant_layers, set_precision
from otaro_export.train.laa import ImmediateUpdate, LowPrecisionAccumulator
from otaro_export.train.losses import kl_to_teacher, next_token_nll
from otaro_export.train.lr_schedule import apply_learning_rate, learning_rate
from otaro_export.train.teacher import FPTeacher
from otaro_export.train.tune_config import TuneConfig
from otaro_export.train.tune_data import (
    Sample,
    batch_indices,
    collate,
    load_samples,
    load_saved_samples,
    save_samples,
    self_distillation_samples,
)

CONFIG_FILE = "tune_config.json"
SAMPLES_FILE = "train_samples.json"
SUMMARY_FILE = "summary.json"


class TuneError(OtaroError, RuntimeError):
    """A tuning run cannot start, resume or continue."""


@dataclass
class TuneResult:
    model: torch.nn.Module  # the tuned model (fake-quant layers attached, float master weights)
    history: list[dict] = field(default_factory=list)  # one entry per step: step, bits, loss, applied
    path: list[int] = field(default_factory=list)
    checkpoint: Path | None = None

    def visits(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for b in self.path:
            counts[b] = counts.get(b, 0) + 1
        return dict(sorted(counts.items()))


def check_device(device: str) -> torch.device:
    """The torch device named by ``device``, or a clear error if this machine does not have it."""
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise TuneError(f"unknown device {device!r} (use cpu, cuda, cuda:1, ...)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise TuneError(f"device {device!r} asked for, but this torch build/machine has no CUDA GPU; use --device cpu")
    return dev


def build_sampler(config: TuneConfig):
    kind = config.sampler_kind
    if kind == "bps":
        return BPSSampler(config.bits, lam=config.bps_lambda)
    if kind == "uniform":
        return UniformSampler(config.bits, seed=config.seed)
    if kind == "fixed":
        return FixedSampler(config.qat_bits)
    return None


def trainable_parameters(model: torch.nn.Module, scope: str) -> list[tuple[str, torch.nn.Parameter]]:
    """``linears``: the fake-quantized linears' weights and biases; ``all``: every parameter."""
    if scope == "all":
        chosen = {id(p) for p in model.parameters()}
    else:
        chosen = {id(p) for layer in fake_quant_layers(model).values() for p in layer.parameters()}
    out = []
    for name, p in model.named_parameters():  # named_parameters() lists a tied tensor once
        p.requires_grad_(id(p) in chosen)
        if id(p) in chosen:
            out.append((name, p))
    return out


def build_optimizer(config: TuneConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def build_training_samples(config: TuneConfig, teacher_model, tokenizer, progress: bool = False) -> list[Sample]:
    if config.data is not None:
        return load_samples(config.data, tokenizer, seq_len=config.seq_len, max_samples=config.num_samples)
    samples = self_distillation_samples(
        teacher_model,
        tokenizer,
        config.num_samples,
        max_new_tokens=config.gen_tokens,
        seed=config.seed,
        progress=progress,
    )
    return [
        Sample(s.ids[: config.seq_len], s.target_start)
        for s in samples
        if s.target_start < min(len(s.ids), config.seq_len)
    ]


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Tuner:
    """Runs (or resumes) one tuning configuration.

    ``loaded``: the model to tune (it is modified in place); loaded from
    ``config.model`` if omitted. ``teacher``/``samples``: reuse a prepared FP
    teacher and data (the experiment script shares them across runs); built
    from a frozen copy of the untuned model otherwise.
    """

    def __init__(
        self,
        config: TuneConfig,
        loaded: LoadedModel | None = None,
        *,
        samples: list[Sample] | None = None,
        teacher: FPTeacher | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
    ):
        self.config = config
        self.progress = progress
        self.log = log
        self.loaded = loaded if loaded is not None else load_model(config.model)
        self.samples = samples
        self.teacher = teacher

    # -- setup -----------------------------------------------------------------------------

    def _prepare(self, output: Path | None) -> None:
        cfg = self.config
        check_device(cfg.device)
        model = self.loaded.model.to(cfg.device)
        model.eval()  # no dropout: the steps are deterministic
        teacher_model = None
        if self.teacher is None or self.samples is None:
            teacher_model = copy.deepcopy(model)  # the untuned FP model, frozen
        if self.samples is None:
            saved = output / SAMPLES_FILE if output is not None else None
            if saved is not None and saved.is_file():
                self.samples = load_saved_samples(saved)
            else:
                self.samples = build_training_samples(cfg, teacher_model, self.loaded.tokenizer, self.progress)
                if saved is not None:
                    save_samples(self.samples, saved)
        if not self.samples:
            raise TuneError("no training samples: the data source produced nothing usable")
        if self.teacher is None and cfg.loss == "kl":
            vocab = model.get_output_embeddings().weight.shape[0]
            self.teacher = FPTeacher(teacher_model, self.samples, vocab, progress=self.progress)
        del teacher_model
        attach_fake_quant(model, cfg.quantize_lm_head)
        named = trainable_parameters(model, cfg.train_scope)
        self.param_names = [n for n, _ in named]
        params = [p for _, p in named]
        self.optimizer = build_optimizer(cfg, params)
        self.sampler = build_sampler(cfg)
        if cfg.uses_laa:
            self.updater = LowPrecisionAccumulator(params, cfg.laa_bits, cfg.laa_interval, cfg.laa_reduce)
        else:
            self.updater = ImmediateUpdate()
        self.model = model
        self.history: list[dict] = []
        self.step = 0

    def _resume(self, output: Path) -> None:
        checkpoint = ckpt.resolve_checkpoint(output)
        meta = ckpt.read_meta(checkpoint)
        if meta.get("param_names") != self.param_names:
            raise TuneError(f"{checkpoint} was written for other trainable tensors; it cannot resume this run")
        weights = ckpt.read_weights(checkpoint)
        state = ckpt.read_training_state(checkpoint)
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name in self.param_names:
                params[name].copy_(weights[name])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.sampler is not None:
                self.sampler.load_state_dict(state["sampler"])
            self.updater.load_state_dict(state["updater"])
        except (ValueError, KeyError) as exc:
            raise TuneError(f"cannot resume from {checkpoint}: {exc}") from exc
        _set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.step = int(state["step"])
        self.log(f"resumed from {checkpoint.name} at step {self.step}")

    # -- checkpoints -----------------------------------------------------------------------

    def _save(self, output: Path) -> Path:
        params = dict(self.model.named_parameters())
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
            "updater": self.updater.state_dict(),
            "rng": _rng_state(),
            "history": self.history,
        }
        meta = {
            "model_source": self.loaded.source,
            "method": self.config.method,
            "param_names": self.param_names,
            "config": self.config.to_dict(),
        }
        return ckpt.save_checkpoint(output, self.step, {n: params[n] for n in self.param_names}, state, meta)

    # -- the loop --------------------------------------------------------------------------

    def run(
        self,
        output: str | Path | None = None,
        resume: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> TuneResult:
        """Tune to ``config.steps``; with ``output``, checkpoint there every ``checkpoint_every`` steps.

        ``resume=True`` continues the run whose checkpoints are in ``output``.
        ``on_step(step)`` is called after each completed step (tests use it to interrupt).
        """
        cfg = self.config
        output = Path(output) if output is not None else None
        if output is not None:
            if ckpt.has_checkpoint(output) and not resume:
                raise TuneError(
                    f"{output} already holds a tuning run; pass --resume to continue it or choose another --output"
                )
            if resume and not ckpt.has_checkpoint(output):
                raise TuneError(f"nothing to resume: {output} holds no checkpoint")
            output.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._prepare(output)
        if output is not None:
            if resume:
                self._resume(output)
            else:
                (output / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
        total = cfg.total_steps
        bar = None
        if self.progress and total > self.step:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=self.step, desc=f"tune ({cfg.method})", unit="step")
        running: dict[int, float] = {}
        last_saved = None
        while self.step < total:
            record = self._train_step()
            self.history.append(record)
            self.step += 1
            b = record["bits"]
            running[b] = record["loss"] if b not in running else 0.8 * running[b] + 0.2 * record["loss"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(" ".join(f"M{k}:{v:.3f}" for k, v in sorted(running.items())))
            if output is not None and (self.step % cfg.checkpoint_every == 0 or self.step == total):
                last_saved = self._save(output)
            if on_step is not None:
                on_step(self.step)
        if bar is not None:
            bar.close()
        if output is not None and last_saved is None:
            last_saved = self._save(output)  # ptq / already finished: still leave a loadable directory
        set_precision(self.model, None)
        result = TuneResult(
            model=self.model,
            history=self.history,
            path=[h["bits"] for h in self.history],
            checkpoint=last_saved,
        )
        if output is not None:
            summary = {
                "steps": self.step,
                "method": cfg.method,
                "visits": {f"E5M{k}": v for k, v in result.visits().items()},
                "delayed_updates": getattr(self.updater, "delayed_updates", 0),
                "bit_path": result.path,
            }
            (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return result

    def _train_step(self) -> dict:
        cfg = self.config
        bits = self.sampler.choose()
        set_precision(self.model, bits)
        idx = batch_indices(len(self.samples), cfg.batch_size, self.step, cfg.seed)
        batch = collate(self.samples, idx, cfg.device)
        loss = self._loss(batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise TuneError(f"loss became {value} at step {self.step} (E5M{bits}): lower the learning rate")
        record = {"step": self.step, "bits": bits, "loss": value}
        if cfg.anchor_bits is not None and cfg.anchor_bits != bits and cfg.anchor_weight > 0:
            # Anchor: the same batch at a fixed precision (e.g. E5M8), added to the loss so that
            # every update also pulls toward keeping that precision; BPS only sees the chosen one.
            set_precision(self.model, cfg.anchor_bits)
            anchor = self._loss(batch)
            set_precision(self.model, bits)
            record["anchor_loss"] = float(anchor.detach())
            loss = loss + cfg.anchor_weight * anchor
        loss.backward()
        self.sampler.observe(bits, value)
        lr = learning_rate(cfg.lr, self.step, cfg.total_steps, cfg.lr_schedule, cfg.warmup_steps)
        apply_learning_rate(self.optimizer, lr)
        record["applied"] = self.updater.step(bits, self.optimizer)
        record["lr"] = lr
        return record

    def _loss(self, batch) -> torch.Tensor:
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        if self.config.loss == "kl":
            return kl_to_teacher(logits, self.teacher.logprobs(batch), batch.loss_mask)
        return next_token_nll(logits, batch.input_ids, batch.loss_mask)
