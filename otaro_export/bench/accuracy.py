"""Accuracy per precision through ``otaro eval``'s library (``otaro_export.train.evaluation``).

Same protocol as ``otaro eval`` with no ``--data``: the evaluation samples are
the FP model's own sampled answers to held-out prompts (``EVAL_PROMPTS``,
fixed seed), scored at every precision (fake-quant = the exported SEFP math of
the export's default recipe: reconstruction rule, exponents, SEFP tied lm_head,
automatic precision floors and the export's int8 activations, so the table
describes the artifact `otaro-export` writes) against the untuned FP model. ``tuned`` adds a run of the ``--checkpoint``
model on the SAME samples, so the two runs are directly comparable. The tuned run is measured through the rules
its run trained with (reconstruction, exponents, floors, int8 activations), as ``otaro-export --checkpoint``
exports it (:meth:`SEFPRecipe.with_tuned_run`); each run's rules are returned beside its rows.
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
) -> tuple[dict[str, list], dict[str, dict]]:
    """``({"untuned": rows[, "tuned": rows]}, rules)``: ``PrecisionMetrics`` for ``bits`` + FP (+ gguf baselines),
    and per run the rules it was measured through (:func:`run_rules`).

    One call of ``evaluate_model`` per run, as `otaro eval` makes. Rules, floors and the lm_head default to the
    export's (``default_recipe``); the tuned run takes what its run recorded where no option here was given, as
    the export of that checkpoint does, and its lm_head follows its tuning config.
    ``baselines`` (gguf formats, e.g. ``BASELINE_FORMATS``; default none) are measured on the untuned weights only.
    """
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.models import load_model
    from otaro_export.train.evaluation import evaluate_model
    from otaro_export.train.tune_data import EVAL_PROMPTS, self_distillation_samples

    recipe = default_recipe(reconstruction=reconstruction, exponent_rule=exponent_rule, layer_floors=layer_floors)
    lm_head = recipe.lm_head == "sefp" if quantize_lm_head is None else quantize_lm_head
    students = [("untuned", None, recipe, None, lm_head, None)]
    if checkpoint is not None:  # read before the model loads and samples: a bad checkpoint fails first
        students.append(("tuned", *tuned_recipe(recipe, checkpoint, log)))
    if loaded is None:
        loaded = load_model(model)
    teacher = loaded.model.eval()
    samples = self_distillation_samples(
        teacher, loaded.tokenizer, num_samples, gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS
    )
    runs: dict[str, list] = {}
    rules: dict[str, dict] = {}
    for name, ckpt, run_recipe, plan, run_lm_head, tuned_run in students:
        run_recipe = run_recipe.for_target("onnx")  # the ONNX export's int8 activations where none was recorded
        runs[name] = evaluate_model(
            teacher,
            loaded.tokenizer,
            samples,
            tuple(bits),
            checkpoint=ckpt,
            quantize_lm_head=run_lm_head,
            reconstruction=run_recipe.reconstruction,
            exponent_rule=run_recipe.exponent_rule,
            layer_floors=run_recipe.layer_floors,
            int8_activations=run_recipe.int8_activations,
            plan=plan,
            baselines=tuple(baselines or ()) if ckpt is None else (),
            batch_size=batch_size,
            log=log,
        )
        rules[name] = run_rules(run_recipe, run_lm_head, tuned_run)
        log(f"accuracy ({name}): {len(samples)} samples, {runs[name][0].tokens} scored tokens")
    return runs, rules


def tuned_recipe(recipe, checkpoint: Path, log: Callable[[str], None] = print):
    """What the bench measures ``checkpoint`` through: ``(checkpoint dir, recipe, floor plan or None,
    quantize_lm_head, tuned_run)``.

    ``recipe.with_tuned_run`` takes the run's recorded settings that ``recipe`` leaves to the defaults, as
    ``otaro-export --checkpoint`` does; ``tuned_run`` is what the export's manifest records
    (``extra.tuned_run``: checkpoint, step, ``from_run``). The floor plan is the run's own (``tuned_rule``, as
    ``otaro eval --checkpoint`` reads it) when its floors were taken, so nothing is planned on the tuned weights.
    """
    from otaro_export.train.checkpoint import read_meta, resolve_checkpoint
    from otaro_export.train.evaluation import tuned_rule

    directory = resolve_checkpoint(checkpoint)
    meta = read_meta(directory)
    tuned, taken = recipe.with_tuned_run(meta, log)
    plan = tuned_rule(directory).get("plan") if "layer_floors" in taken else None
    lm_head = bool((meta.get("config") or {}).get("quantize_lm_head", False))  # as evaluate_model reads it
    tuned_run = {"checkpoint": directory.name, "step": meta.get("step"), "from_run": taken}
    return directory, tuned, plan, lm_head, tuned_run


def run_rules(recipe, quantize_lm_head: bool, tuned_run: dict | None = None) -> dict:
    """bench.json ``accuracy_rules[run]``: the settings one accuracy run used; a tuned run's ``from_run`` names
    those taken from its checkpoint rather than the export defaults."""
    rules = {
        "reconstruction": recipe.reconstruction,
        "exponent_rule": recipe.exponent_rule,
        "layer_floors": recipe.layer_floors,
        "int8_activations": recipe.int8_activations or 0,
        "lm_head": "sefp" if quantize_lm_head else "float",
    }
    if tuned_run is not None:
        rules.update(tuned_run)
    return rules
