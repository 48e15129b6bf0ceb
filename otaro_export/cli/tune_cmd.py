"""``otaro tune``: once-for-all-precisions fine-tuning (SEFP fake-quant + BPS + LAA), resumable.

The command only parses options; settings, resume and the run itself live in ``otaro_export.train``.
It runs unchanged under ``torchrun --nproc-per-node N --no-python otaro tune ...`` (docs/TUNING.md).
"""

from __future__ import annotations

from pathlib import Path

import typer

from otaro_export.cli.options import parse_bits
from otaro_export.train.tune_config import (
    DEFAULT_STEPS,
    FloorPolicy,
    Loss,
    LRSchedule,
    Method,
    Optimizer,
    Parallel,
    Scope,
)


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
    batch_size: int = typer.Option(4, "--batch-size", help="samples per step, over all ranks under torchrun"),
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
        True,
        "--quantize-lm-head/--no-quantize-lm-head",
        help="also fake-quantize (and train) the tied embedding + lm_head, as the export stores them by default "
        "(--lm-head sefp); --no-quantize-lm-head for an export with --lm-head float",
    ),
    reconstruction: str = typer.Option(
        None,
        "--reconstruction",
        help="reconstruction rule to train through: floor (the paper's), center, fitted; default: the export's",
    ),
    exponent_rule: str = typer.Option(
        None, "--exponent-rule", help="encoder exponent rule: floor (the paper's) or search; default: the export's"
    ),
    layer_floors: FloorPolicy = typer.Option(
        None,
        "--layer-floors",
        help="auto: the export's per-layer precision floors, planned once on the untuned model and kept "
        "(resume, export); none: every layer at the step's precision; default: the export's (auto)",
    ),
    int8_activations: int = typer.Option(
        None,
        "--int8-activations",
        metavar="BITS",
        help="train E5M3..E5M<BITS> with int8 activations, as the export runs them (docs/FORMAT.md §9); "
        "0: float activations; default: the export's (5, ONNX and ExecuTorch)",
    ),
    teacher_cache_gib: float = typer.Option(
        3.0,
        "--teacher-cache-gib",
        min=0.0,
        help="the FP teacher's log-probs (float16, samples x scored tokens x vocab) up to this size are computed "
        "once; a larger set runs a frozen teacher copy every step (slower)",
    ),
    seed: int = typer.Option(0, "--seed"),
    checkpoint_every: int = typer.Option(50, "--checkpoint-every", help="write a checkpoint every N steps"),
    device: str = typer.Option(
        None, "--device", help="cpu (default), cuda, cuda:1, ...; under torchrun 'cuda' means cuda:LOCAL_RANK"
    ),
    parallel: Parallel = typer.Option(
        None,
        "--parallel",
        help="under torchrun: ddp (default; weights replicated) or fsdp (FSDP2, weights and optimizer sharded)",
    ),
    activation_checkpointing: bool = typer.Option(
        None,
        "--activation-checkpointing/--no-activation-checkpointing",
        help="recompute each decoder block in backward: far less memory, about 1/3 more compute (default off)",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="continue the run in --output (also on another number of ranks)"
    ),
) -> None:
    """Fine-tune once so the model holds up at every SEFP precision E5M3..E5M8."""
    from otaro_export.train.trainer import tune_run
    from otaro_export.train.tune_config import TuneConfig, resume_config

    chosen_parallel = None if parallel is None else parallel.value
    if resume:
        # The run's floors and int8 setting are part of what it trains through: asking to change them is an error.
        fixed = {"layer_floors": layer_floors, "int8_activations": int8_activations}
        config = resume_config(
            output,
            steps=steps,
            parallel=chosen_parallel,
            device=device,
            activation_checkpointing=activation_checkpointing,
            **{k: v for k, v in fixed.items() if v is not None},
        )
    else:
        config = TuneConfig(
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
            reconstruction=reconstruction or _export_rules()[0],
            exponent_rule=exponent_rule or _export_rules()[1],
            layer_floors=_export_floors() if layer_floors is None else layer_floors.value,
            int8_activations=_export_int8() if int8_activations is None else int8_activations,
            seed=seed,
            teacher_cache_bytes=int(teacher_cache_gib * 2**30),
            checkpoint_every=checkpoint_every,
            device=device or "cpu",
            parallel=chosen_parallel or "ddp",
            activation_checkpointing=bool(activation_checkpointing),
        )
    result = tune_run(config, output, resume=resume, log=typer.echo)
    if not result.is_main:
        return
    visits = ", ".join(f"E5M{k}: {v}" for k, v in result.visits().items()) or "none"
    typer.echo(f"tuned {len(result.history)} steps ({config.method}); visits {visits}")
    typer.echo(
        f"wrote {output} (export with: otaro-export --checkpoint {output} ...; evaluate with: otaro eval --checkpoint {output})"
    )


def _export_rules() -> tuple[str, str]:
    """The export's default reconstruction and exponent rules: tuning trains for what export ships."""
    from otaro_export.reconstruction import DEFAULT_EXPONENT_RULE, DEFAULT_RULE

    return DEFAULT_RULE, DEFAULT_EXPONENT_RULE


def _export_floors() -> str:
    from otaro_export.export.sefp_recipe import DEFAULT_LAYER_FLOORS

    return DEFAULT_LAYER_FLOORS


def _export_int8() -> int:
    """The export's default int8-activation setting (the same for every target)."""
    from otaro_export.errors import OtaroError
    from otaro_export.export.sefp_recipe import DEFAULT_INT8_ACTIVATIONS

    values = set(DEFAULT_INT8_ACTIVATIONS.values())
    if len(values) != 1:  # a run trains through one rule: targets that disagree need a choice here
        raise OtaroError(f"the export targets' default --int8-activations differ: {DEFAULT_INT8_ACTIVATIONS}")
    return values.pop()
