"""Quality at every precision: perplexity, KL to the FP teacher, top-1 agreement; table, JSON, PNG.

The student is a model with fake-quant layers attached (fake-quantizing
linears at E5Mk is exactly the exported SEFP model's math); the teacher is
the untuned FP model. Metrics are pooled over all scored tokens of the
evaluation samples (token-weighted, not per-sample averages):

* ``ppl`` = exp(mean NLL of the actual next tokens) under the student;
* ``kl``  = mean KL(P_FP-teacher || P_student) per token (nats);
* ``top1`` = fraction of tokens where the student's argmax equals the teacher's.
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
from otaro_export.train.losses import kl_to_teacher, next_token_nll, top1_agreement
from otaro_export.train.tune_data import Sample, collate


@dataclass
class PrecisionMetrics:
    precision: str  # "E5M3".."E5M8" or "FP"
    bits: int | None
    ppl: float
    kl: float
    top1: float
    tokens: int


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
        t_logits = teacher(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        t_logprobs = F.log_softmax(t_logits[batch.loss_mask].float(), dim=-1)
        n = int(batch.loss_mask.sum())
        tokens += n
        for p in precisions:
            set_precision(student, p)
            logits = student(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
            sums[p]["nll"] += float(next_token_nll(logits, batch.input_ids, batch.loss_mask)) * n
            sums[p]["kl"] += float(kl_to_teacher(logits, t_logprobs, batch.loss_mask)) * n
            sums[p]["top1"] += float(top1_agreement(logits, t_logprobs, batch.loss_mask)) * n
    set_precision(student, None)
    student.train(was_training)
    return [
        PrecisionMetrics(
            precision=precision_label(p),
            bits=p,
            ppl=math.exp(sums[p]["nll"] / tokens),
            kl=max(0.0, sums[p]["kl"] / tokens),  # float rounding can give -1e-8 for identical models
            top1=sums[p]["top1"] / tokens,
            tokens=tokens,
        )
        for p in precisions
    ]


def format_table(rows: list[PrecisionMetrics], title: str | None = None) -> str:
    lines = [title] if title else []
    lines.append(f"{'precision':<10}{'ppl':>10}{'KL to FP':>12}{'top-1 agree':>13}")
    for r in rows:
        lines.append(f"{r.precision:<10}{r.ppl:>10.3f}{r.kl:>12.4f}{r.top1:>13.3f}")
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
