"""Accuracy per precision through ``otaro eval``'s library (``otaro_export.train.evaluation``).

Same protocol as ``otaro eval`` with no ``--data``: the evaluation samples are
the FP model's own sampled answers to held-out prompts (``EVAL_PROMPTS``,
fixed seed), scored at every precision (fake-quant = the exported SEFP math)
against the untuned FP model. ``tuned`` adds a run of the ``--checkpoint``
model on the SAME samples, so the two runs are directly comparable.
"""

from __future__ import annotations

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
    reconstruction: str | None = None,
    exponent_rule: str | None = None,
    baselines=None,
) -> dict[str, list]:
    """``{"untuned": rows[, "tuned": rows]}``: ``PrecisionMetrics`` for ``bits`` + FP (+ gguf baselines).

    One call of ``evaluate_model`` per run, as `otaro eval` makes. Rules default to the export's;
    ``baselines`` (gguf formats, e.g. ``BASELINE_FORMATS``; default none) are measured on the untuned weights only.
    """
    from otaro_export.models import load_model
    from otaro_export.reconstruction import DEFAULT_EXPONENT_RULE, DEFAULT_RULE
    from otaro_export.train.evaluation import evaluate_model
    from otaro_export.train.tune_data import EVAL_PROMPTS, self_distillation_samples

    if loaded is None:
        loaded = load_model(model)
    teacher = loaded.model.eval()
    samples = self_distillation_samples(
        teacher, loaded.tokenizer, num_samples, gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS
    )
    runs: dict[str, list] = {}
    students = [("untuned", None)] + ([("tuned", checkpoint)] if checkpoint is not None else [])
    for name, ckpt in students:
        runs[name] = evaluate_model(
            teacher,
            loaded.tokenizer,
            samples,
            tuple(bits),
            checkpoint=ckpt,
            quantize_lm_head=None if ckpt is not None else False,
            reconstruction=reconstruction or DEFAULT_RULE,
            exponent_rule=exponent_rule or DEFAULT_EXPONENT_RULE,
            baselines=tuple(baselines or ()) if ckpt is None else (),
            batch_size=batch_size,
            log=log,
        )
        log(f"accuracy ({name}): {len(samples)} samples, {runs[name][0].tokens} scored tokens")
    return runs
