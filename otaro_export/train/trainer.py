"""The tuning loop: one SEFP precision per step (BPS/uniform/fixed), KL to the FP teacher, LAA, checkpoints.

Each step: the sampler picks ``k``; every selected linear runs with its float
master weight fake-quantized to E5Mk (STE backward); the loss is the KL
divergence to the untuned FP model on the batch's scored tokens (or the
next-token cross-entropy with ``loss="ce"``); the sampler sees the loss; the
update policy (LAA or immediate) decides when the optimizer steps.

Determinism: the batch of step ``s`` is a pure function of (seed, s), the
samplers and LAA carry their whole state in checkpoints, and the model runs
in eval mode (no dropout), so a resumed run reproduces an uninterrupted one
bit for bit on CPU (same number of ranks).

Under torchrun (``train/distributed.py``) every rank runs this loop on its share of
each global batch; DDP or FSDP2 averages the gradients, so several ranks reach the
weights one process reaches, up to the order of float additions.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from otaro_export.errors import OtaroError
from otaro_export.models import LoadedModel, load_model
from otaro_export.train import checkpoint as ckpt
from otaro_export.train.bit_samplers import FixedSampler, UniformSampler
from otaro_export.train.bps import BPSSampler
from otaro_export.train.distributed import DistContext, checkpoint_blocks, copy_full_, shard_model
from otaro_export.train.fake_quant import (
    attach_with_rules,
    fake_quant_layers,
    refresh_encodings,
    set_floors,
    set_precision,
)
from otaro_export.train.laa import ImmediateUpdate, LowPrecisionAccumulator
from otaro_export.train.losses import kl_to_teacher, next_token_nll, scored_logits
from otaro_export.train.lr_schedule import apply_learning_rate, learning_rate
from otaro_export.train.teacher import FPTeacher, fits_cache
from otaro_export.train.tune_config import CONFIG_FILE, TuneConfig
from otaro_export.train.tune_data import (
    TRAIN_PROMPTS,
    Dropped,
    Sample,
    batch_indices,
    collate,
    data_fingerprint,
    key_differences,
    load_samples,
    prompt_length,
    prompts_digest,
    read_saved_samples,
    save_samples,
    self_distillation_samples,
)

__all__ = ["CONFIG_FILE", "SAMPLES_FILE", "SUMMARY_FILE", "METRICS_FILE", "TuneError", "TuneResult", "Tuner"]

SAMPLES_FILE = "train_samples.json"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"  # one JSON line per step: bits, loss, lr, tokens/s (rank 0 writes it)


class TuneError(OtaroError, RuntimeError):
    """A tuning run cannot start, resume or continue."""


@dataclass
class TuneResult:
    model: torch.nn.Module  # the tuned model (fake-quant layers attached, float master weights)
    history: list[dict] = field(default_factory=list)  # one entry per step: step, bits, loss, applied
    path: list[int] = field(default_factory=list)
    checkpoint: Path | None = None
    is_main: bool = True  # rank 0 (or the only process): the one that reports

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
    # On the CPU torch's default AdamW makes about seven passes over every tensor; the fused kernel makes one
    # (0.41 s -> 0.14 s a step for SmolLM2-135M on 2 cores). Same update, up to float rounding (test_trainer.py).
    # Not for sharded (DTensor) weights, and GPUs keep torch's default (multi-tensor kernels).
    fused = all(p.device.type == "cpu" and not _is_sharded(p) for p in params) or None
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)


def _is_sharded(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch without distributed support
        return False
    return isinstance(tensor, DTensor)


def build_training_samples(
    config: TuneConfig, teacher_model, tokenizer, progress: bool = False, dropped: Dropped | None = None
) -> list[Sample]:
    """The run's samples: read from ``config.data``, or the FP model's own answers (self-distillation).

    ``dropped`` collects what was left out and why. With nothing usable, the error says why
    (e.g. every prompt is at least ``seq_len`` tokens long).
    """
    dropped = dropped if dropped is not None else Dropped(config.seq_len)
    if config.data is not None:
        return load_samples(
            config.data, tokenizer, seq_len=config.seq_len, max_samples=config.num_samples, dropped=dropped
        )
    if tokenizer is not None:
        # Before spending time on generation: a prompt as long as --seq-len leaves no answer to score.
        lengths = [prompt_length(tokenizer, p) for p in TRAIN_PROMPTS[: config.num_samples]]
        if min(lengths) >= config.seq_len:
            raise TuneError(
                f"no usable training samples: every self-distillation prompt is {min(lengths)}-{max(lengths)} tokens "
                f"with the chat template, which leaves no room for an answer within --seq-len {config.seq_len} "
                f"(raise --seq-len above {max(lengths)})"
            )
    generated = self_distillation_samples(
        teacher_model,
        tokenizer,
        config.num_samples,
        max_new_tokens=config.gen_tokens,
        seed=config.seed,
        progress=progress,
    )
    samples = []
    for s in generated:
        if s.target_start >= config.seq_len:
            dropped.prompt_too_long(s.target_start)
        else:
            samples.append(Sample(s.ids[: config.seq_len], s.target_start))
    if not samples:
        raise TuneError(f"no usable training samples from self-distillation: {dropped.describe() or 'no answers'}")
    return samples


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample_key(config: TuneConfig, loaded: LoadedModel) -> dict:
    """Every setting that shapes the training samples: a cached sample file is reused only if its key is equal."""
    tokenizer = loaded.tokenizer
    model_config = getattr(loaded.model, "config", None)
    key = {
        "model": loaded.source,
        "model_config": _digest(model_config.to_json_string()) if hasattr(model_config, "to_json_string") else "",
        "tokenizer": _digest(f"{len(tokenizer)} {getattr(tokenizer, 'chat_template', '')}") if tokenizer else "",
        "seq_len": config.seq_len,
        "num_samples": config.num_samples,
    }
    if config.data is not None:
        key["data"] = data_fingerprint(config.data)
    else:
        key.update(gen_tokens=config.gen_tokens, seed=config.seed, prompts=prompts_digest())
    return key


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    # The loop draws no CUDA random numbers (no dropout); restore them only on the same GPU count.
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Tuner:
    """Runs (or resumes) one tuning configuration, on one process or as one rank of a torchrun group.

    ``loaded``: the model to tune (it is modified in place); loaded from
    ``config.model`` if omitted. ``teacher``/``samples``: reuse a prepared FP
    teacher and data (the experiment script shares them across runs); built
    from the untuned model otherwise. ``floor_plan``: with ``layer_floors="auto"``,
    reuse a prepared ``reconstruction.FloorPlan``; otherwise the export's plan of the
    untuned model is made once at the start, recorded in every checkpoint and reused
    on resume. ``dist``: this process's place in a group; by default it is read from
    torchrun's environment (one process without it).
    """

    def __init__(
        self,
        config: TuneConfig,
        loaded: LoadedModel | None = None,
        *,
        samples: list[Sample] | None = None,
        teacher: FPTeacher | None = None,
        floor_plan=None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        dist: DistContext | None = None,
    ):
        self.config = config
        self._dist = dist
        self._progress = progress
        self._log = log
        self.loaded = loaded if loaded is not None else load_model(config.model)
        self.samples = samples
        self.teacher = teacher
        self.floor_plan = floor_plan

    # -- setup -----------------------------------------------------------------------------

    @property
    def progress(self) -> bool:
        return self._progress and self.dist.is_main

    def log(self, message: str) -> None:
        if self.dist.is_main:  # one line per run, not one per rank
            self._log(message)

    def _on_main(self, build: Callable[[], object]):
        """``build()`` on rank 0, its result on every rank; an error there is raised on every rank."""
        result, error = None, None
        if self.dist.is_main:
            try:
                result = build()
            except OtaroError as exc:
                error = str(exc)
                if not self.dist.distributed:
                    raise
        if self.dist.distributed:
            result, error = self.dist.broadcast_object((result, error))
        if error is not None:
            raise TuneError(error)
        return result

    def _load_or_build_samples(self, output: Path | None, model, resume: bool) -> list[Sample]:
        cfg = self.config
        key = sample_key(cfg, self.loaded)
        cache = output / SAMPLES_FILE if output is not None else None
        if cache is not None and cache.is_file():
            samples, saved_key = read_saved_samples(cache)
            changed = key_differences(saved_key, key)
            if samples and resume:
                # The run's own data: keep it, so the resumed steps see what the first ones saw.
                if changed and saved_key is not None:
                    self.log(
                        f"note: {', '.join(changed)} changed since the run started; resuming with its saved samples"
                    )
                return samples
            if samples and not changed:
                return samples
            self.log(f"{cache.name} was built with other settings ({', '.join(changed)}): rebuilding it")
        dropped = Dropped(cfg.seq_len)
        with self._on_device_for_generation(model):
            samples = build_training_samples(cfg, model, self.loaded.tokenizer, self.progress, dropped)
        if dropped.total:
            self.log(f"note: {dropped.total} candidate sample(s) left out: {dropped.describe()}")
        if cache is not None:
            save_samples(samples, cache, key)
        return samples

    @property
    def _fsdp(self) -> bool:
        return self.dist.distributed and self.config.parallel == "fsdp"

    @contextlib.contextmanager
    def _on_device_for_generation(self, model):
        """Under FSDP the full model waits on the CPU for sharding; rank 0 borrows the device to generate data."""
        moved = self._fsdp and self.config.data is None and self.dist.device.type != "cpu"
        if moved:
            model.to(self.dist.device)
        try:
            yield
        finally:
            if moved:
                model.to("cpu")

    def _prepare(self, output: Path | None, resume: bool) -> None:
        cfg, d = self.config, self.dist
        model = self.loaded.model
        if not self._fsdp:
            model.to(d.device)  # under FSDP each unit moves to the device as it is sharded: never the whole model
        model.eval()  # no dropout: the steps are deterministic
        if self.samples is None:
            self.samples = self._on_main(lambda: self._load_or_build_samples(output, model, resume))
        if not self.samples:
            raise TuneError("no training samples: the data source produced nothing usable")
        per_step = min(cfg.batch_size, len(self.samples))
        if per_step < d.world_size:
            raise TuneError(
                f"{d.world_size} ranks need at least one sample each per step, but a step holds {per_step} "
                f"(--batch-size {cfg.batch_size}, {len(self.samples)} samples): raise --batch-size or use fewer ranks"
            )
        vocab = model.get_output_embeddings().weight.shape[0]
        budget = cfg.teacher_cache_bytes
        need_teacher = self.teacher is None and cfg.loss == "kl"
        cache_teacher = need_teacher and fits_cache(self.samples, vocab, budget)
        if need_teacher and not cache_teacher:
            # A frozen copy, run every step (under FSDP still on the CPU here, sharded below).
            self.teacher = FPTeacher(copy.deepcopy(model), self.samples, vocab, budget, progress=self.progress)
            if self._fsdp:
                shard_model(self.teacher.module, d.device)
        elif cache_teacher and not self._fsdp:
            # Log-probs are computed once, now, while the model is still the untuned FP one: no copy.
            self.teacher = FPTeacher(model, self.samples, vocab, budget, progress=self.progress)
            cache_teacher = False
        self.floor_plan = self._plan_floors(output, resume, model)
        attach_with_rules(
            model, cfg.quantize_lm_head, cfg.reconstruction, cfg.exponent_rule, self.samples, cfg.int8_activations
        )
        try:
            set_floors(model, {} if self.floor_plan is None else self.floor_plan.floors)
        except ValueError as exc:
            raise TuneError(f"the precision floors do not fit this model: {exc}") from exc
        self.param_names = [n for n, _ in trainable_parameters(model, cfg.train_scope)]
        self._log_memory_estimate(model, teacher_cached=self.teacher is None or self.teacher.cached)
        if cfg.activation_checkpointing:
            checkpoint_blocks(model)
        self.module = model  # the model itself (FSDP shards it in place; DDP wraps it)
        self.model = d.wrap(model, cfg.parallel)
        if self._fsdp:
            refresh_encodings(model)  # rule tables computed on the CPU before sharding: again, on the device
        if cache_teacher:
            # FSDP: the sharded model, untuned and at full precision (no bits set yet), fills the
            # cache with every rank in step (the same samples in the same order on all ranks).
            self.teacher = FPTeacher(self.model, self.samples, vocab, budget, progress=self.progress)
        current = dict(model.named_parameters())  # FSDP2 replaced the Parameters: take them after wrapping
        params = [current[n] for n in self.param_names]
        self.optimizer = build_optimizer(cfg, params)
        self.sampler = build_sampler(cfg)
        if cfg.uses_laa:
            self.updater = LowPrecisionAccumulator(params, cfg.laa_bits, cfg.laa_interval, cfg.laa_reduce)
        else:
            self.updater = ImmediateUpdate()
        self.history: list[dict] = []
        self.step = 0

    def _plan_floors(self, output: Path | None, resume: bool, model):
        """The run's precision floors: given, recorded in the checkpoint (resume), or planned now (None: none).

        Planned on the model as loaded, i.e. untuned: the floors an export of the untuned model picks
        (``sefp_recipe.plan_layer_floors``), so training runs every layer at the precision export will.
        """
        cfg = self.config
        if cfg.layer_floors == "none":
            if self.floor_plan is not None:
                raise TuneError("a floor plan was given, but the run's layer_floors is 'none'")
            return None
        if self.floor_plan is not None:
            return self.floor_plan
        if resume and output is not None:
            return self._recorded_plan(output)
        plan = self._on_main(lambda: self._make_floor_plan(model))
        raised = sorted(set(plan.floors.values()))
        self.log(
            f"precision floors (planned once, on the untuned model): {len(plan.floors)} layer(s) at "
            f"{'/'.join(f'E5M{b}' for b in raised) or '-'} or above; E5M3 reads "
            f"{plan.bits_per_weight[3]:.3f} bits per SEFP weight"
        )
        return plan

    def _make_floor_plan(self, model):
        from otaro_export.export.sefp_recipe import SEFPRecipe, plan_layer_floors
        from otaro_export.reconstruction import export_units

        cfg = self.config
        if self.loaded.tokenizer is None:
            raise TuneError(
                "--layer-floors auto needs the model's tokenizer (calibration text); or --layer-floors none"
            )
        try:
            units = export_units(model, include_lm_head=cfg.quantize_lm_head)
        except ValueError as exc:
            raise TuneError(f"--layer-floors auto: {exc}; use --layer-floors none") from exc
        if fake_quant_layers(model):
            set_precision(model, None)  # the float model, as export sees it
        recipe = SEFPRecipe(cfg.reconstruction, cfg.exponent_rule, int8_activations=cfg.int8_activations)
        return plan_layer_floors(model, self.loaded.tokenizer, units, recipe, progress=self.progress)

    def _recorded_plan(self, output: Path):
        from otaro_export.reconstruction import FloorPlan

        checkpoint = ckpt.resolve_checkpoint(output)
        record = ckpt.read_meta(checkpoint).get("floor_plan")
        if record is None:
            raise TuneError(f"{checkpoint} records no floor plan, but the run's layer_floors is 'auto'")
        try:
            plan = FloorPlan.from_dict(record)
        except ValueError as exc:
            raise TuneError(f"{checkpoint}: its floor plan is unreadable ({exc})") from exc
        self.log(f"precision floors: the plan recorded in {checkpoint.name} ({len(plan.floors)} layer(s))")
        return plan

    def _log_memory_estimate(self, model, teacher_cached: bool) -> None:
        if not self.dist.is_main:
            return
        from otaro_export.train import memory

        cfg = self.config
        est = memory.estimate(
            memory.model_shape(model, cfg.train_scope, cfg.quantize_lm_head),
            world_size=self.dist.world_size,
            parallel=cfg.parallel if self.dist.distributed else "ddp",
            optimizer=cfg.optimizer,
            momentum=cfg.momentum,
            laa=cfg.uses_laa,
            batch_size=cfg.batch_size,
            seq_len=max(len(s.ids) for s in self.samples),
            teacher_cached=teacher_cached,
            activation_checkpointing=cfg.activation_checkpointing,
        )
        self.log(f"memory per rank ({self.dist.device.type}, estimate, docs/TUNING.md): {est.describe()}")

    def _params(self) -> dict[str, torch.Tensor]:
        current = dict(self.module.named_parameters())
        return {n: current[n] for n in self.param_names}

    def _resume(self, output: Path) -> None:
        checkpoint = ckpt.resolve_checkpoint(output)
        meta = ckpt.read_meta(checkpoint)
        if meta.get("param_names") != self.param_names:
            raise TuneError(f"{checkpoint} was written for other trainable tensors; it cannot resume this run")
        weights = ckpt.read_weights(checkpoint)
        state = ckpt.read_training_state(checkpoint)
        for name, param in self._params().items():
            copy_full_(param, weights[name])
        del weights
        refresh_encodings(self.module)  # the rule's exponents/levels of the resumed weights, as at that step
        updater_state = dict(state["updater"])
        try:
            if "optimizer" in state:  # written before the sharded state/ directory existed
                if self.dist.distributed and self.config.parallel == "fsdp":
                    raise TuneError(f"{checkpoint} predates sharded checkpoints: resume it without --parallel fsdp")
                self.optimizer.load_state_dict(state["optimizer"])
            else:
                self._load_sharded(checkpoint, updater_state, state.get("optimizer_state", True))
            if self.sampler is not None:
                self.sampler.load_state_dict(state["sampler"])
            self.updater.load_state_dict(updater_state)
        except (ValueError, KeyError) as exc:
            raise TuneError(f"cannot resume from {checkpoint}: {exc}") from exc
        _set_rng_state(state["rng"])
        self.history = list(state["history"])
        self.step = int(state["step"])
        self.log(f"resumed from {checkpoint.name} at step {self.step}")

    def _load_sharded(self, checkpoint: Path, updater_state: dict, has_optimizer_state: bool) -> None:
        """Optimizer state and LAA buffers from ``state/``, resharded to this run's layout by DCP."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        params = self._params()
        names = updater_state.get("buffer_names", [])
        targets = {"laa": {n: torch.zeros_like(params[n]) for n in names}}
        if has_optimizer_state:  # else the run stopped before its first update: keep the fresh optimizer
            targets["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)  # allocates what to load into
        if not ckpt.read_sharded(checkpoint, targets):
            raise TuneError(f"{checkpoint} has no {ckpt.SHARDED_DIR}/ directory: it cannot be resumed")
        if has_optimizer_state:
            set_optimizer_state_dict(self.model, self.optimizer, targets["optimizer"])
        laa = targets["laa"]
        if "buffer_names" in updater_state:
            updater_state["buffers"] = [laa.get(n) for n in self.param_names]
            del updater_state["buffer_names"]

    # -- checkpoints -----------------------------------------------------------------------

    def _save(self, output: Path) -> Path:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        params = self._params()
        weights = self.dist.gather_full(params)  # full tensors on rank 0: export reads them whatever the world size
        updater = self.updater.state_dict()
        buffers = updater.pop("buffers", None)
        laa = {}
        if buffers is not None:
            laa = {n: b for n, b in zip(self.param_names, buffers) if b is not None}
            updater["buffer_names"] = list(laa)
        state = {
            "step": self.step,
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
            "updater": updater,
            "rng": _rng_state(),
            "history": self.history,
        }
        meta = {
            "model_source": self.loaded.source,
            "method": self.config.method,
            "param_names": self.param_names,
            "config": self.config.to_dict(),
            "world_size": self.dist.world_size,
            "parallel": self.dist.parallel or "none",
            # made once on the untuned model; resume and export read it from here
            "floor_plan": None if self.floor_plan is None else self.floor_plan.to_dict(),
        }
        sharded = {"laa": laa}
        if self.optimizer.state:
            # Not before the first update: the state-dict API would initialise the optimizer with a
            # zero step, and AdamW's step count (bias correction) would then differ from an unsaved run.
            sharded["optimizer"] = get_optimizer_state_dict(self.model, self.optimizer)
        state["optimizer_state"] = bool(self.optimizer.state)
        return ckpt.save_checkpoint(output, self.step, weights, state, meta, sharded=sharded, dist=self.dist)

    def _write_metrics(self, output: Path, records: list[dict], mode: str) -> None:
        if self.dist.is_main:
            with (output / METRICS_FILE).open(mode, encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r) + "\n")

    # -- the loop --------------------------------------------------------------------------

    @property
    def dist(self) -> DistContext:
        if self._dist is None:
            self._dist = DistContext.from_env(self.config.device)
        return self._dist

    def run(
        self,
        output: str | Path | None = None,
        resume: bool = False,
        on_step: Callable[[int], None] | None = None,
    ) -> TuneResult:
        """Tune to ``config.steps``; with ``output``, checkpoint there every ``checkpoint_every`` steps.

        ``resume=True`` continues the run whose checkpoints are in ``output`` (on any number of ranks).
        Under torchrun the process group stays up afterwards (a group cannot be set up twice in one
        process); :func:`tune_run` tears it down.
        ``on_step(step)`` is called after each completed step (tests use it to interrupt).
        """
        check_device(self.config.device)
        dist = self.dist
        lock = None
        try:
            output = Path(output) if output is not None else None
            if output is not None:
                if ckpt.has_checkpoint(output) and not resume:
                    raise TuneError(
                        f"{output} already holds a tuning run; pass --resume to continue it or choose another --output"
                    )
                if resume and not ckpt.has_checkpoint(output):
                    raise TuneError(f"nothing to resume: {output} holds no checkpoint")
                if dist.is_main:
                    output.mkdir(parents=True, exist_ok=True)
                    lock = ckpt.OutputLock(output).acquire()
                    removed = ckpt.remove_leftovers(output)
                    if removed:
                        self.log(f"removed {len(removed)} leftover(s) of an interrupted save: {', '.join(removed)}")
            return self._run(output, resume, on_step)
        finally:
            if lock is not None:
                lock.release()

    def _run(self, output: Path | None, resume: bool, on_step) -> TuneResult:
        cfg, dist = self.config, self.dist
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self._prepare(output, resume)
        if dist.distributed:
            self.log(
                f"tuning on {dist.world_size} ranks ({cfg.parallel}, {dist.device.type}); global batch "
                f"{cfg.batch_size}, {cfg.batch_size / dist.world_size:g} samples per rank"
            )
        if output is not None:
            if resume:
                self._resume(output)
                self._write_metrics(output, self.history, "w")
            elif dist.is_main:
                (output / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
                self._write_metrics(output, [], "w")
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
            if self.step % cfg.checkpoint_every == 0:
                refresh_encodings(self.module)  # a pure function of the step: resume re-encodes at the same steps
            if output is not None:
                self._write_metrics(output, [record], "a")
            b = record["bits"]
            running[b] = record["loss"] if b not in running else 0.8 * running[b] + 0.2 * record["loss"]
            if bar is not None:
                bar.update(1)
                losses = " ".join(f"M{k}:{v:.3f}" for k, v in sorted(running.items()))
                bar.set_postfix_str(f"{losses} {record['tok_s']:.0f} tok/s")
            if output is not None and (self.step % cfg.checkpoint_every == 0 or self.step == total):
                last_saved = self._save(output)
            if on_step is not None:
                on_step(self.step)
        if bar is not None:
            bar.close()
        if output is not None and last_saved is None:
            last_saved = self._save(output)  # ptq / already finished: still leave a loadable directory
        set_precision(self.module, None)
        result = TuneResult(
            model=self.module,
            history=self.history,
            path=[h["bits"] for h in self.history],
            checkpoint=last_saved,
            is_main=dist.is_main,
        )
        if output is not None and dist.is_main:
            timed = [h for h in self.history if "seconds" in h]
            seconds = sum(h["seconds"] for h in timed)
            summary = {
                "steps": self.step,
                "method": cfg.method,
                "visits": {f"E5M{k}": v for k, v in result.visits().items()},
                "delayed_updates": getattr(self.updater, "delayed_updates", 0),
                "world_size": dist.world_size,
                "parallel": dist.parallel or "none",
                "tokens_per_second": round(sum(h["tokens"] for h in timed) / seconds, 1) if seconds > 0 else None,
                "bit_path": result.path,
            }
            (output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return result

    def _train_step(self) -> dict:
        cfg, dist = self.config, self.dist
        started = time.perf_counter()
        bits = dist.agree(self.sampler.choose(), "bit-width")
        set_precision(self.module, bits)
        idx = batch_indices(len(self.samples), cfg.batch_size, self.step, cfg.seed)
        scored = sum(len(self.samples[i].ids) - self.samples[i].target_start for i in idx)
        tokens = sum(len(self.samples[i].ids) for i in idx)
        batch = collate(self.samples, dist.share(idx), dist.device)
        # Each rank's sum over its tokens, scaled so that DDP/FSDP's mean over ranks is the
        # token-weighted mean of the whole global batch (what one process computes).
        scale = dist.world_size / scored
        loss_sum = self._loss_sum(batch)
        (loss_sum * scale).backward()
        sums = [float(loss_sum.detach())]
        anchored = cfg.anchor_bits is not None and cfg.anchor_bits != bits and cfg.anchor_weight > 0
        if anchored:
            # Anchor: the same batch at a fixed precision (e.g. E5M8); its gradient is added to the
            # step's, so every update also pulls toward keeping that precision. BPS only sees the chosen one.
            set_precision(self.module, cfg.anchor_bits)
            anchor_sum = self._loss_sum(batch)
            (anchor_sum * (scale * cfg.anchor_weight)).backward()
            set_precision(self.module, bits)
            sums.append(float(anchor_sum.detach()))
        totals = dist.sum_in_rank_order(sums)
        value = totals[0] / scored
        if not math.isfinite(value):
            raise TuneError(f"loss became {value} at step {self.step} (E5M{bits}): lower the learning rate")
        record = {"step": self.step, "bits": bits, "loss": value}
        if anchored:
            record["anchor_loss"] = totals[1] / scored
        self.sampler.observe(bits, value)
        lr = learning_rate(cfg.lr, self.step, cfg.total_steps, cfg.lr_schedule, cfg.warmup_steps)
        apply_learning_rate(self.optimizer, lr)
        record["applied"] = self.updater.step(bits, self.optimizer)
        record["lr"] = lr
        seconds = time.perf_counter() - started
        record.update(tokens=tokens, seconds=round(seconds, 4), tok_s=round(tokens / max(seconds, 1e-9), 1))
        return record

    def _loss_sum(self, batch) -> torch.Tensor:
        # No KV cache: training scores whole sequences, and a cache would be appended to again on recompute.
        # Logits only where the loss reads them ([M, V]): the vocabulary matmul skips prompts and padding.
        logits = scored_logits(self.model, batch, self.module, use_cache=False)
        if self.config.loss == "kl":
            return kl_to_teacher(logits, self.teacher.logprobs(batch), batch.loss_mask, reduction="sum")
        return next_token_nll(logits, batch.input_ids, batch.loss_mask, reduction="sum")


def tune_run(config: TuneConfig, output: str | Path, resume: bool = False, log: Callable[[str], None] = print):
    """``otaro tune``: check what is cheap to check, load the model, run (as one rank under torchrun)."""
    if config.data is not None and not Path(config.data).expanduser().exists():
        raise TuneError(f"data path {config.data} does not exist")
    check_device(config.device)
    dist = DistContext.from_env(config.device)  # joins torchrun's group, if there is one
    try:
        return Tuner(config, log=log, dist=dist).run(output, resume=resume)
    finally:
        dist.close()
