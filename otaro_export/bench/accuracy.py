"""Accuracy per precision through ``otaro eval``'s library (``otaro_export.train.evaluation``).

Same protocol as ``otaro eval`` with no ``--data``: the evaluation samples are
the FP model's own sampled answers to held-out prompts (``EVAL_PROMPTS``,
fixed seed), scored at every precision (fake-quant = the exported SEFP math)
against the untuned FP model. ``tuned`` adds a run of the ``--checkpoint``
model on the SAME samples, so the two runs are directly comparable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

EVAL_SEED = 1234  # the seed `otaro eval` uses by default: the numbers match its table


def evaluate_accuracy(
    model: str,
    bits: tuple[int, ...],
    num_samples: int,
    gen_tokens: int,
    checkpoint: Path | None = None,
    batch_size: int = 4,
    loaded=None,
    log: Callable[[str], None] = print,
) -> dict[str, list]:
    """``{"untuned": rows[, "tuned": rows]}``, rows = ``PrecisionMetrics`` for ``bits`` + FP."""
    from otaro_export.models import load_model
    from otaro_export.train.evaluation import evaluate_precisions
    from otaro_export.train.fake_quant import attach_fake_quant
    from otaro_export.train.tune_data import EVAL_PROMPTS, self_distillation_samples

    if loaded is None:
        loaded = load_model(model)
    teacher = loaded.model.float().eval()
    samples = self_distillation_samples(
        teacher, loaded.tokenizer, num_samples, gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS
    )
    runs: dict[str, list] = {}
    students = [("untuned", None)] + ([("tuned", checkpoint)] if checkpoint is not None else [])
    for name, ckpt in students:
        student = copy.deepcopy(teacher)
        quantize_lm_head = False
        if ckpt is not None:
            from otaro_export.train.checkpoint import load_tuned_weights, read_meta, resolve_checkpoint

            meta = read_meta(resolve_checkpoint(ckpt))
            quantize_lm_head = bool(meta.get("config", {}).get("quantize_lm_head", False))
            load_tuned_weights(student, ckpt)
        attach_fake_quant(student, quantize_lm_head)
        runs[name] = evaluate_precisions(student, teacher, samples, tuple(bits), batch_size=batch_size)
        log(f"accuracy ({name}): {len(samples)} samples, {runs[name][0].tokens} scored tokens")
        del student
    return runs
