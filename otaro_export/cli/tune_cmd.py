"""``otaro tune``: once-for-all-precisions fine-tuning (SEFP fake-quant + BPS + LAA), resumable."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from otaro_export.cli.options import parse_bits
from otaro_export.errors import OtaroError

DEFAULT_STEPS = 200


class Method(str, Enum):
    otaro = "otaro"
    bps = "bps"
    uniform = "uniform"
    qat = "qat"
    ptq = "ptq"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class LRSchedule(str, Enum):
    constant = "constant"
    cosine = "cosine"


class Loss(str, Enum):
    kl = "kl"
    ce = "ce"


class Scope(str, Enum):
    linears = "linears"
    all = "all"


def tune(
    output: Path = typer.Option(
        ..., "--output", "-o", help="run directory: checkpoints, data, config (loadable by otaro-export --checkpoint)"
    ),
    model: str = typer.Option(
        "default", "--model", help="'default' (SmolLM2-135M-Instruct), a local HF model dir, or a .gguf file"
    ),
    data: Path = typer.Option(
        None, "--data", help=".txt/.jsonl file or local HF datasets dir; default: data-free self-distillation"
    ),
    method: Method = typer.Option(
        Method.otaro, "--method", help="otaro = BPS+LAA; bps (no LAA); uniform; qat (one precision); ptq (no tuning)"
    ),
    steps: int = typer.Option(
        None,
        "--steps",
        help=f"optimisation steps (default {DEFAULT_STEPS}; with --resume: the saved run's, or a larger number to extend it)",
    ),
    batch_size: int = typer.Option(4, "--batch-size"),
    seq_len: int = typer.Option(256, "--seq-len", help="max tokens per sample"),
    num_samples: int = typer.Option(
        64, "--num-samples", help="self-distillation answers to generate (or max samples read from --data)"
    ),
    gen_tokens: int = typer.Option(96, "--gen-tokens", help="max new tokens per self-distillation answer"),
    optimizer: Optimizer = typer.Option(Optimizer.sgd, "--optimizer"),
    lr: float = typer.Option(1e-5, "--lr", help="learning rate (paper default: SGD 1e-5)"),
    lr_schedule: LRSchedule = typer.Option(
        LRSchedule.constant, "--lr-schedule", help="constant (paper) or cosine decay to 0 over --steps"
    ),
    warmup_steps: int = typer.Option(0, "--warmup-steps", help="linear learning-rate warm-up steps"),
    momentum: float = typer.Option(0.0, "--momentum", help="SGD momentum"),
    weight_decay: float = typer.Option(0.0, "--weight-decay"),
    bits: str = typer.Option("3,4,5,6,7,8", "--bits", help="precisions to tune for (E5Mk mantissa bits)"),
    bps_lambda: float = typer.Option(5.0, "--bps-lambda", help="BPS exploration weight lambda"),
    laa: bool = typer.Option(None, "--laa/--no-laa", help="LAA on/off (default: on for --method otaro only)"),
    laa_bits: str = typer.Option("3,4", "--laa-bits", help="ultra-low precisions whose gradients LAA delays"),
    laa_interval: int = typer.Option(10, "--laa-interval", help="LAA applies one update every N low-bit visits"),
    qat_bits: int = typer.Option(8, "--qat-bits", help="the single precision of --method qat"),
    anchor_bits: int = typer.Option(
        None,
        "--anchor-bits",
        help="also score this precision (e.g. 8) on every step's batch: protects it, costs a second pass (not in the paper)",
    ),
    loss: Loss = typer.Option(
        Loss.kl, "--loss", help="kl: KL to the FP model; ce: next-token cross-entropy on the data"
    ),
    train_scope: Scope = typer.Option(
        Scope.linears, "--train-scope", help="linears: the SEFP linears only; all: every parameter"
    ),
    quantize_lm_head: bool = typer.Option(
        False, "--quantize-lm-head", help="also fake-quantize lm_head (export with the same flag)"
    ),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="write a checkpoint every N steps"),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ..."),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --output after an interruption"),
) -> None:
    """Fine-tune once so the model holds up at every SEFP precision E5M3..E5M8."""
    from otaro_export.train.trainer import CONFIG_FILE, TuneError, Tuner
    from otaro_export.train.tune_config import TuneConfig

    if resume:
        saved = output / CONFIG_FILE
        if not saved.is_file():
            raise TuneError(f"nothing to resume: {saved} does not exist")
        try:
            settings = json.loads(saved.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TuneError(f"{saved} is corrupt ({exc})") from exc
        if steps is not None:
            settings["steps"] = steps
        make = lambda: TuneConfig.from_dict(settings)  # noqa: E731
    else:
        if data is not None and not data.exists():
            raise OtaroError(f"data path {data} does not exist")
        make = lambda: TuneConfig(  # noqa: E731
            model=model,
            data=None if data is None else str(data),
            method=method.value,
            steps=DEFAULT_STEPS if steps is None else steps,
            batch_size=batch_size,
            seq_len=seq_len,
            num_samples=num_samples,
            gen_tokens=gen_tokens,
            optimizer=optimizer.value,
            lr=lr,
            lr_schedule=lr_schedule.value,
            warmup_steps=warmup_steps,
            momentum=momentum,
            weight_decay=weight_decay,
            bits=parse_bits(bits, "--bits"),
            bps_lambda=bps_lambda,
            laa=laa,
            laa_bits=parse_bits(laa_bits, "--laa-bits"),
            laa_interval=laa_interval,
            qat_bits=qat_bits,
            anchor_bits=anchor_bits,
            loss=loss.value,
            train_scope=train_scope.value,
            quantize_lm_head=quantize_lm_head,
            seed=seed,
            checkpoint_every=checkpoint_every,
            device=device,
        )
    try:
        config = make()
    except ValueError as exc:
        raise OtaroError(f"invalid tuning settings: {exc}") from exc
    result = Tuner(config, log=typer.echo).run(output, resume=resume)
    visits = ", ".join(f"E5M{k}: {v}" for k, v in result.visits().items()) or "none"
    typer.echo(f"tuned {len(result.history)} steps ({config.method}); visits {visits}")
    typer.echo(
        f"wrote {output} (export with: otaro-export --checkpoint {output} ...; evaluate with: otaro eval --checkpoint {output})"
    )
