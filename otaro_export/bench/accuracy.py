"""Accuracy per precision through ``otaro eval``'s library (``otaro_export.train.evaluation``).

Same protocol as ``otaro eval`` with no ``--data``: the evaluation samples are
the FP model's own sampled answers to held-out prompts (``EVAL_PROMPTS``,
fixed seed), scored at every precision (fake-quant = the exported SEFP math of
the export's default recipe: reconstruction rule, exponents, SEFP tied lm_head,
automatic precision floors and the export's int8 activations, so the table
describes the artifact `otaro-export` writes) against the untuned FP model. ``tuned`` adds a run of the ``--checkpoint``
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
    layer_floors: str | None = None,
    quantize_lm_head: bool | None = None,
) -> dict[str, list]:
    """``{"untuned": rows[, "tuned": rows]}``: ``PrecisionMetrics`` for ``bits`` + FP (+ gguf baselines).

    One call of ``evaluate_model`` per run, as `otaro eval` makes. Rules, floors and the lm_head default to the
    export's (``default_recipe``; a checkpoint's lm_head follows its tuning config);
    ``baselines`` (gguf formats, e.g. ``BASELINE_FORMATS``; default none) are measured on the untuned weights only.
    """
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.models import load_model
    from otaro_export.train.evaluation import evaluate_model
    from otaro_export.train.tune_data import EVAL_PROMPTS, self_distillation_samples

    if loaded is None:
        loaded = load_model(model)
    teacher = loaded.model.eval()
    samples = self_distillation_samples(
        teacher, loaded.tokenizer, num_samples, gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS
    )
    recipe = default_recipe(reconstruction=reconstruction, exponent_rule=exponent_rule, layer_floors=layer_floors)
    lm_head = recipe.lm_head == "sefp" if quantize_lm_head is None else quantize_lm_head
    runs: dict[str, list] = {}
    students = [("untuned", None)] + ([("tuned", checkpoint)] if checkpoint is not None else [])
    for name, ckpt in students:
        runs[name] = evaluate_model(
            teacher,
            loaded.tokenizer,
            samples,
            tuple(bits),
            checkpoint=ckpt,
            quantize_lm_head=None if ckpt is not None else lm_head,
            reconstruction=recipe.reconstruction,
            exponent_rule=recipe.exponent_rule,
            layer_floors=recipe.layer_floors,
            int8_activations=recipe.for_target("onnx").int8_activations,
            baselines=tuple(baselines or ()) if ckpt is None else (),
            batch_size=batch_size,
            log=log,
        )
        log(f"accuracy ({name}): {len(samples)} samples, {runs[name][0].tokens} scored tokens")
    return runs
