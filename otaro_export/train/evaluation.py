"""Quality at every precision: perplexity, KL to the FP teacher, top-1 agreement; table, JSON, PNG.

The student is a model with fake-quant layers attached (fake-quantizing
linears at E5Mk is exactly the exported SEFP model's math); the teacher is
the untuned FP model. Metrics are pooled over all scored tokens of the
evaluation samples (token-weighted, not per-sample averages):

* ``ppl`` = exp(mean NLL of the actual next tokens) under the student;
* ``kl``  = mean KL(P_FP-teacher || P_student) per token (nats);
* ``top1`` = fraction of tokens where the student's argmax equals the teacher's.

Beside the SEFP precisions, :func:`evaluate_baselines` requantizes the same
float weights with gguf-py's reference quantizers (Q4_0, MXFP4, Q5_0, Q8_0):
formats of about E5M3's..E5M8's size that a reader already knows.
:func:`evaluate_model` is the one evaluation `otaro eval` and `otaro bench` run.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from otaro_export.sefp import SUPPORTED_BITS
from otaro_export.train.fake_quant import set_precision
from otaro_export.train.losses import kl_to_teacher, next_token_nll, scored_logits, top1_agreement
from otaro_export.train.tune_data import Sample, collate


@dataclass
class PrecisionMetrics:
    precision: str  # "E5M3".."E5M8", "FP", or a baseline format ("Q4_0", ...)
    bits: int | None
    ppl: float
    kl: float
    top1: float
    tokens: int
    bits_per_weight: float | None = None  # weight bits read per weight (SEFP: at that precision)


#: gguf-py reference quantizers shown beside the SEFP precisions, with their bits per weight
BASELINE_FORMATS: dict[str, float] = {"Q4_0": 4.5, "MXFP4": 4.25, "Q5_0": 5.5, "Q8_0": 8.5}


def precision_label(bits: int | None) -> str:
    return "FP" if bits is None else f"E5M{bits}"


@torch.no_grad()
def evaluate_precisions(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    samples: list[Sample],
    bits=SUPPORTED_BITS,
    include_fp: bool = True,
    batch_size: int = 4,
    progress: bool = False,
) -> list[PrecisionMetrics]:
    """Metrics of ``student`` at each precision (and FP) against ``teacher`` on ``samples``."""
    if not samples:
        raise ValueError("no evaluation samples")
    device = next(student.parameters()).device
    precisions: list[int | None] = list(bits) + ([None] if include_fp else [])
    sums = {p: {"nll": 0.0, "kl": 0.0, "top1": 0.0} for p in precisions}
    tokens = 0
    starts = range(0, len(samples), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc="eval", unit="batch")
    was_training = student.training
    student.eval()
    for start in starts:
        batch = collate(samples, list(range(start, min(start + batch_size, len(samples)))), device)
        # logits at the scored positions only ([M, V]): the metrics read nothing else
        t_logprobs = F.log_softmax(scored_logits(teacher, batch).float(), dim=-1)
        n = int(batch.loss_mask.sum())
        tokens += n
        for p in precisions:
            set_precision(student, p)
            logits = scored_logits(student, batch)
            sums[p]["nll"] += float(next_token_nll(logits, batch.input_ids, batch.loss_mask)) * n
            sums[p]["kl"] += float(kl_to_teacher(logits, t_logprobs, batch.loss_mask)) * n
            sums[p]["top1"] += float(top1_agreement(logits, t_logprobs, batch.loss_mask)) * n
    set_precision(student, None)
    student.train(was_training)
    from otaro_export.packing import bytes_per_weight_read

    return [
        PrecisionMetrics(
            precision=precision_label(p),
            bits=p,
            ppl=math.exp(sums[p]["nll"] / tokens),
            kl=max(0.0, sums[p]["kl"] / tokens),  # float rounding can give -1e-8 for identical models
            top1=sums[p]["top1"] / tokens,
            tokens=tokens,
            bits_per_weight=None if p is None else bytes_per_weight_read(p) * 8,
        )
        for p in precisions
    ]


def gguf_requantize(w: torch.Tensor, fmt: str) -> torch.Tensor:
    """``w`` ``[N, K]`` quantized and dequantized by gguf-py's reference ``fmt`` quantizer (float32)."""
    import numpy as np
    from gguf import GGMLQuantizationType, quants

    if fmt not in BASELINE_FORMATS:
        raise ValueError(f"unknown baseline format {fmt!r}: choose from {', '.join(BASELINE_FORMATS)}")
    qtype = GGMLQuantizationType[fmt]
    block = quants.GGML_QUANT_SIZES[qtype][0]
    if w.shape[-1] % block:
        raise ValueError(f"{fmt} needs rows that are a multiple of {block} weights, got {w.shape[-1]}")
    data = np.ascontiguousarray(w.detach().to(torch.float32).cpu().numpy())
    return torch.from_numpy(quants.dequantize(quants.quantize(data, qtype), qtype).astype(np.float32)).reshape(w.shape)


@torch.no_grad()
def evaluate_baselines(
    model: torch.nn.Module,
    teacher: torch.nn.Module,
    samples: list[Sample],
    layer_names: list[str],
    formats=tuple(BASELINE_FORMATS),
    batch_size: int = 4,
    progress: bool = False,
) -> list[PrecisionMetrics]:
    """Metrics of ``model`` with the weights of ``layer_names`` requantized in each gguf format.

    The model is left unchanged (each format's weights are swapped in, then the originals back).
    A layer given a new weight is untied from the embedding, like a fake-quant lm_head.
    """
    if not samples:
        raise ValueError("no evaluation samples")
    device = next(model.parameters()).device
    modules = [model.get_submodule(n) for n in layer_names]
    originals = [m.weight for m in modules]
    rows = []
    formats = list(formats)
    iterator = formats
    if progress:
        from tqdm import tqdm

        iterator = tqdm(formats, desc="gguf baselines", unit="format")
    was_training = model.training
    model.eval()
    try:
        for fmt in iterator:
            for module, weight in zip(modules, originals):
                module.weight = torch.nn.Parameter(gguf_requantize(weight, fmt).to(device), requires_grad=False)
            nll = kl = top1 = 0.0
            tokens = 0
            for start in range(0, len(samples), batch_size):
                batch = collate(samples, list(range(start, min(start + batch_size, len(samples)))), device)
                t_logprobs = F.log_softmax(scored_logits(teacher, batch).float(), dim=-1)
                logits = scored_logits(model, batch)
                n = int(batch.loss_mask.sum())
                tokens += n
                nll += float(next_token_nll(logits, batch.input_ids, batch.loss_mask)) * n
                kl += float(kl_to_teacher(logits, t_logprobs, batch.loss_mask)) * n
                top1 += float(top1_agreement(logits, t_logprobs, batch.loss_mask)) * n
            rows.append(
                PrecisionMetrics(
                    fmt,
                    None,
                    math.exp(nll / tokens),
                    max(0.0, kl / tokens),
                    top1 / tokens,
                    tokens,
                    BASELINE_FORMATS[fmt],
                )
            )
    finally:
        for module, weight in zip(modules, originals):
            module.weight = weight
        model.train(was_training)
    return rows


def attach_export_rule(
    student: torch.nn.Module,
    tokenizer,
    *,
    quantize_lm_head: bool = False,
    reconstruction: str = "floor",
    exponent_rule: str = "floor",
    layer_floors: str = "none",
    floor_budget_bits: float | None = None,
    plan=None,
    progress: bool = False,
    log=None,
    int8_activations: int = 0,
):
    """Attach fake-quant layers that run ``student`` as the export would run its current weights; in place.

    The SEFP linears (and a tied SEFP lm_head's embedding) go through ``reconstruction`` /
    ``exponent_rule``, whose input statistics come from ``calibration`` on the student's own
    calibration text. ``layer_floors="auto"``: per-layer precision floors from
    ``reconstruction.floor_plan`` (budget ``floor_budget_bits``, default the export's), or the given
    ``plan`` (e.g. the floors a model was tuned with). ``int8_activations``: as the export option (0: off).
    Returns the floor plan applied (None without floors).
    """
    from otaro_export.convert import select_sefp_linears
    from otaro_export.train.fake_quant import attach_fake_quant, fake_quant_layers, set_floors, set_precision

    log = log or (lambda msg: None)
    if layer_floors not in ("none", "auto"):
        raise ValueError(f"layer_floors must be 'none' or 'auto', got {layer_floors!r}")
    if layer_floors == "none":
        plan = None
    if fake_quant_layers(student):
        set_precision(student, None)  # statistics of the float weights, as export collects them
    layer_names = select_sefp_linears(student, quantize_lm_head)
    stats = None
    if reconstruction == "fitted" or exponent_rule == "search" or (layer_floors == "auto" and plan is None):
        from otaro_export.calibration import calibration_samples, collect_input_stats

        calib = calibration_samples(student, tokenizer, progress=progress)
        stats = collect_input_stats(student, calib, layer_names, progress=progress)
        if layer_floors == "auto" and plan is None:
            from otaro_export.reconstruction import DEFAULT_FLOOR_BUDGET_BITS, export_units, floor_plan

            units = export_units(student, include_lm_head=quantize_lm_head)
            budget = DEFAULT_FLOOR_BUDGET_BITS if floor_budget_bits is None else floor_budget_bits
            plan = floor_plan(
                student,
                units,
                stats,
                samples=calib,
                rule=reconstruction,
                exponent_rule=exponent_rule,
                budget_bits=budget,
            )
            log(f"precision floors: {len(plan.floors)} layers at E5M{max(plan.floors.values(), default=3)}")
    attach_fake_quant(student, quantize_lm_head, reconstruction, exponent_rule, stats, int8_activations)
    set_floors(student, {} if plan is None else plan.floors)
    return plan


def evaluate_model(
    teacher: torch.nn.Module,
    tokenizer,
    samples: list[Sample],
    bits=SUPPORTED_BITS,
    *,
    checkpoint=None,
    quantize_lm_head: bool | None = None,
    reconstruction: str = "floor",
    exponent_rule: str = "floor",
    baselines=(),
    layer_floors: str = "none",
    floor_budget_bits: float | None = None,
    batch_size: int = 4,
    progress: bool = False,
    log=None,
    int8_activations: int = 0,
    plan=None,
) -> list[PrecisionMetrics]:
    """The evaluation `otaro eval` and `otaro bench` share: one model, every precision, FP, baselines.

    The student is a copy of ``teacher`` (with the tuned tensors of ``checkpoint`` loaded, if any)
    whose SEFP linears run through ``reconstruction`` / ``exponent_rule`` (the export's math; the
    input statistics of ``fitted`` / ``search`` come from ``calibration`` on the student's own
    calibration text). ``quantize_lm_head=None`` follows the checkpoint's tuning config.
    ``baselines``: gguf formats to requantize the student's float weights in (``BASELINE_FORMATS``).
    ``layer_floors="auto"``: per-layer precision floors from ``reconstruction.floor_plan`` (budget
    ``floor_budget_bits``, default the export's), applied as the export applies them; each row's
    ``bits_per_weight`` is then the plan's average over the SEFP layers; ``plan``: those floors given
    (e.g. :func:`tuned_rule`'s), not planned. ``int8_activations``: the export option of that name
    (docs/FORMAT.md §9; 0: float activations).
    """
    import copy

    from otaro_export.convert import select_sefp_linears
    from otaro_export.train.fake_quant import detach_fake_quant

    log = log or (lambda msg: None)
    student = copy.deepcopy(teacher)
    if checkpoint is not None:
        from otaro_export.train.checkpoint import load_tuned_weights, read_meta, resolve_checkpoint

        if quantize_lm_head is None:
            meta = read_meta(resolve_checkpoint(checkpoint))
            quantize_lm_head = bool(meta.get("config", {}).get("quantize_lm_head", False))
        names = load_tuned_weights(student, checkpoint)
        log(f"loaded {len(names)} tuned tensors from {checkpoint}")
    quantize_lm_head = bool(quantize_lm_head)
    layer_names = select_sefp_linears(student, quantize_lm_head)
    plan = attach_export_rule(
        student,
        tokenizer,
        quantize_lm_head=quantize_lm_head,
        reconstruction=reconstruction,
        exponent_rule=exponent_rule,
        layer_floors=layer_floors,
        floor_budget_bits=floor_budget_bits,
        progress=progress,
        log=log,
        int8_activations=int8_activations,
        plan=plan,
    )
    rows = evaluate_precisions(student, teacher, samples, tuple(bits), batch_size=batch_size, progress=progress)
    if plan is not None:
        for row in rows:
            if row.bits is not None:
                row.bits_per_weight = plan.bits_per_weight[row.bits]
    if baselines:
        detach_fake_quant(student)
        rows += evaluate_baselines(student, teacher, samples, layer_names, baselines, batch_size, progress)
    del student
    return rows


def tuned_rule(checkpoint) -> dict:
    """What an ``otaro tune`` run trained through, as :func:`evaluate_model` keywords.

    ``reconstruction``, ``exponent_rule``, ``layer_floors`` and ``plan`` (its floor plan, made on the
    untuned model) and ``int8_activations``, each only if the run recorded it (runs saved before those
    options record none of them).
    """
    from otaro_export.reconstruction import FloorPlan, check_rule
    from otaro_export.sefp import check_exponent_rule
    from otaro_export.train.checkpoint import CheckpointError, read_meta, resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint)
    meta = read_meta(checkpoint)
    config = meta.get("config") or {}
    out = {}
    for key, check in (("reconstruction", check_rule), ("exponent_rule", check_exponent_rule)):
        if key in config:
            try:
                out[key] = check(config[key])
            except ValueError as exc:
                raise CheckpointError(f"{checkpoint}: its {key} is unusable ({exc})") from exc
    if config.get("layer_floors") == "auto":
        try:
            out.update(layer_floors="auto", plan=FloorPlan.from_dict(meta.get("floor_plan") or {}))
        except ValueError as exc:
            raise CheckpointError(f"{checkpoint}: its floor plan is unreadable ({exc})") from exc
    elif config.get("layer_floors") == "none":
        out.update(layer_floors="none", plan=None)
    if "int8_activations" in config:
        out["int8_activations"] = int(config["int8_activations"])
    return out


def format_table(rows: list[PrecisionMetrics], title: str | None = None) -> str:
    """SEFP precisions in order, each gguf baseline printed right after the precision of about its size."""
    lines = [title] if title else []
    lines.append(f"{'precision':<10}{'bits/w':>8}{'ppl':>10}{'KL to FP':>12}{'top-1 agree':>13}")
    sefp_rows = [r for r in rows if r.precision not in BASELINE_FORMATS]
    baselines = sorted((r for r in rows if r.precision in BASELINE_FORMATS), key=lambda r: r.bits_per_weight or 0)
    ordered = []
    for r in sefp_rows:
        ordered.append(r)
        if r.bits is not None:
            following = [b for b in sefp_rows if b.bits is not None and b.bits > r.bits]
            upper = min((b.bits_per_weight or 0) for b in following) if following else float("inf")
            # a baseline goes after the largest SEFP precision that reads no more bits than it does
            ordered += [b for b in baselines if (r.bits_per_weight or 0) <= (b.bits_per_weight or 0) < upper]
    ordered += [b for b in baselines if b not in ordered]
    for r in ordered:
        bpw = "" if r.bits_per_weight is None else f"{r.bits_per_weight:.3f}"
        name = r.precision if r.precision not in BASELINE_FORMATS else f"  {r.precision}"
        lines.append(f"{name:<10}{bpw:>8}{r.ppl:>10.3f}{r.kl:>12.4f}{r.top1:>13.3f}")
    return "\n".join(lines)


def rows_to_json(rows: list[PrecisionMetrics]) -> list[dict]:
    return [asdict(r) for r in rows]


def rows_from_json(data: list[dict]) -> list[PrecisionMetrics]:
    return [PrecisionMetrics(**d) for d in data]


def save_json(results: dict[str, list[PrecisionMetrics]], path: Path, extra: dict | None = None) -> None:
    payload = {"runs": {name: rows_to_json(rows) for name, rows in results.items()}, **(extra or {})}
    Path(path).write_text(json.dumps(payload, indent=2), encoding="utf-8")


def plot_png(results: dict[str, list[PrecisionMetrics]], path: Path, title: str = "SEFP precision sweep") -> None:
    """KL to FP (log scale) and top-1 agreement vs precision, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_kl, ax_top1) = plt.subplots(1, 2, figsize=(11, 4.2))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*X"
    for i, (name, rows) in enumerate(results.items()):
        quant = [r for r in rows if r.bits is not None]
        xs = [r.bits for r in quant]
        # Distinct colour + marker per run: more runs than the default 10-colour cycle still read apart.
        style = dict(color=colors[(2 * i) % 20 + (i // 10) % 2], marker=markers[i % len(markers)], label=name)
        ax_kl.plot(xs, [max(r.kl, 1e-6) for r in quant], **style)
        ax_top1.plot(xs, [r.top1 for r in quant], **style)
    for ax, ylabel in ((ax_kl, "KL to FP teacher (nats/token)"), (ax_top1, "top-1 agreement with FP")):
        ax.set_xlabel("mantissa bits (E5Mk)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(list(SUPPORTED_BITS))
        ax.grid(True, alpha=0.3)
    ax_kl.set_yscale("log")
    ax_top1.set_ylim(0, 1.02)
    ax_top1.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
