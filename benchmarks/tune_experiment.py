"""OTARo tuning experiment: PTQ vs E5M8-only QAT vs uniform sampling vs BPS vs BPS+LAA (SGD, AdamW).

Every configuration starts from the same untuned model, sees the same
self-distillation data (the FP model's own sampled chat answers to
``TRAIN_PROMPTS``), runs the same number of steps, and is evaluated on the
FP model's sampled answers to the disjoint ``EVAL_PROMPTS`` at E5M3..E5M8 + FP
(KL to the FP teacher, top-1 agreement, perplexity).

    python benchmarks/tune_experiment.py --out results/tune --steps 60

Every row trains and is evaluated through one quantization rule, named as in
``otaro export``: ``--reconstruction``, ``--exponents``, ``--layer-floors``,
``--lm-head`` and ``--int8-activations`` (default: the paper's ``floor`` / ``floor``,
no floors, float lm_head, float activations, which reproduces docs/TUNING.md's first
table; the ONNX export's default is ``fitted`` / ``search`` / ``auto`` / ``sefp`` / ``4``). With ``--layer-floors auto`` the
floor plan is made once on the untuned model and every row trains and is
evaluated with those floors. Training computes the rule's statistics on its
own samples, as ``otaro tune`` does; evaluation re-encodes the final weights
with statistics of the calibration text on those weights, as ``otaro eval``
and the export do.

Results are written after every configuration (``results.json``,
``results.md``, ``results.png`` under ``--out``, or ``$OUT`` on the device
machine), so a run cut short keeps what it finished. ``--samples-cache DIR``
stores the generated train/eval samples so that several processes (each
running a ``--configs`` subset) share identical data; ``--merge A B ...``
combines their results.json files into one table and plot.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from otaro_export import sefp
from otaro_export.models import LoadedModel, load_model
from otaro_export.train import fake_quant
from otaro_export.train.evaluation import (
    attach_export_rule,
    evaluate_precisions,
    format_table,
    plot_png,
    rows_to_json,
)
from otaro_export.train.fake_quant import fake_quant_layers
from otaro_export.train.teacher import DEFAULT_CACHE_BYTES, FPTeacher
from otaro_export.train.trainer import Tuner
from otaro_export.train.tune_config import TuneConfig
from otaro_export.train.tune_data import (
    EVAL_PROMPTS,
    TRAIN_PROMPTS,
    load_saved_samples,
    save_samples,
    self_distillation_samples,
)

RTN_REFERENCE = "RTN per precision (reference; not nestable)"


@contextlib.contextmanager
def round_to_nearest_quantizer():
    """Make the fake-quant layers round |w| to the nearest E5Mk level instead of truncating.

    Same groups, shared exponents and power-of-two steps as the format
    (``sefp``'s own helpers); only ``floor`` becomes ``round``. Used for the
    reference row only: a rounded E5M3 is not a truncation of a rounded E5M8,
    so no single stored model gives these numbers.
    """

    def rtn(w: torch.Tensor, bits: int) -> torch.Tensor:
        return sefp._grid_values(w.detach().to(torch.float32), bits, torch.round).to(w.dtype)

    saved = fake_quant.fake_quantize
    fake_quant.fake_quantize = rtn
    try:
        yield
    finally:
        fake_quant.fake_quantize = saved


# name -> TuneConfig overrides (on top of the shared budget)
CONFIGS = {
    "PTQ (no tuning)": dict(method="ptq"),
    # Diagnostic, not SEFP: each precision rounded to nearest on its own (8 separate models).
    # It cannot be stored as one nested model; it shows what truncation costs.
    RTN_REFERENCE: dict(method="ptq"),
    "BPS+LAA AdamW": dict(method="otaro", optimizer="adamw"),
    "BPS AdamW": dict(method="bps", optimizer="adamw"),
    "uniform AdamW": dict(method="uniform", optimizer="adamw"),
    "E5M8 QAT AdamW": dict(method="qat", optimizer="adamw", qat_bits=8),
    "BPS+LAA SGD lr1e-5": dict(method="otaro", optimizer="sgd", lr=1e-5, momentum=0.0),  # the paper's defaults
    "BPS+LAA SGD lr1e-3": dict(method="otaro", optimizer="sgd", lr=1e-3, momentum=0.0),
    # SGD rows without their own lr/momentum take --sgd-lr / --momentum
    "BPS+LAA SGD": dict(method="otaro", optimizer="sgd"),
    "BPS SGD": dict(method="bps", optimizer="sgd"),
    "uniform SGD": dict(method="uniform", optimizer="sgd"),
    "E5M8 QAT SGD": dict(method="qat", optimizer="sgd", qat_bits=8),
    # not in the paper: every step also scores E5M8 on the same batch (twice the compute per step)
    "BPS AdamW + E5M8 anchor": dict(method="bps", optimizer="adamw", anchor_bits=8),
    "BPS+LAA AdamW + E5M8 anchor": dict(method="otaro", optimizer="adamw", anchor_bits=8),
}


@dataclass(frozen=True)
class Rule:
    """The quantization every row trains and is evaluated through (``otaro export``'s option names)."""

    reconstruction: str = "floor"
    exponents: str = "floor"
    layer_floors: str = "none"
    lm_head: str = "float"
    floor_budget: float | None = None
    int8_activations: int = 0

    @property
    def quantize_lm_head(self) -> bool:
        return self.lm_head == "sefp"

    @property
    def paper(self) -> bool:
        rules = (self.reconstruction, self.exponents, self.layer_floors, self.int8_activations)
        return rules == ("floor", "floor", "none", 0)

    def attach(self, model, tokenizer, plan=None):
        """Fake-quant ``model`` as the export would run its current weights (``plan``: floors to keep)."""
        return attach_export_rule(
            model,
            tokenizer,
            quantize_lm_head=self.quantize_lm_head,
            reconstruction=self.reconstruction,
            exponent_rule=self.exponents,
            layer_floors=self.layer_floors,
            floor_budget_bits=self.floor_budget,
            plan=plan,
            int8_activations=self.int8_activations,
        )


def plan_once(original, tokenizer, rule: Rule):
    """The floor plan of the untuned model (None without ``--layer-floors auto``); ``original`` is untouched."""
    if rule.layer_floors != "auto":
        return None
    return rule.attach(copy.deepcopy(original), tokenizer)


def run_config(
    name: str,
    cfg: TuneConfig,
    original,
    loaded: LoadedModel,
    train: list,
    evals: list,
    teacher: FPTeacher,
    rule: Rule,
    plan=None,
) -> tuple[dict, list]:
    """Train one row (PTQ: none) through ``rule`` with ``plan``'s floors and evaluate it the same way."""
    if name == RTN_REFERENCE and not rule.paper:
        raise ValueError(f"{RTN_REFERENCE!r} rounds the paper's grid: run it with the default rule")
    t = time.time()
    student = copy.deepcopy(original)
    for p in student.parameters():
        p.requires_grad_(False)
    floors = {} if plan is None else plan.floors
    if cfg.method == "ptq":
        tuned, visits, history = student, {}, []
    else:
        # The Tuner attaches the rule (statistics from its own samples, as `otaro tune`) and sets the
        # shared plan's floors, as `otaro tune --layer-floors auto` sets the plan it makes.
        cfg = dataclasses.replace(
            cfg, layer_floors="none" if plan is None else "auto", int8_activations=rule.int8_activations
        )
        result = Tuner(
            cfg,
            LoadedModel(student, loaded.tokenizer, loaded.source),
            samples=train,
            teacher=teacher,
            floor_plan=plan,
            progress=True,
        ).run()
        tuned, visits, history = result.model, result.visits(), result.history
        kept = {n for n, m in fake_quant_layers(tuned).items() if m.min_bits is not None}
        if kept != {m for members in _members(tuned, floors) for m in members}:
            raise RuntimeError("training lost the precision floors")
    train_s = time.time() - t
    rule.attach(tuned, loaded.tokenizer, plan)
    quantizer = round_to_nearest_quantizer() if name == RTN_REFERENCE else contextlib.nullcontext()
    with quantizer:
        metrics = evaluate_precisions(tuned, original, evals, batch_size=4)
    if plan is not None:
        for row in metrics:
            if row.bits is not None:
                row.bits_per_weight = plan.bits_per_weight[row.bits]
    record = {
        "config": cfg.to_dict(),
        "train_s": round(train_s, 1),
        "eval_s": round(time.time() - t - train_s, 1),
        "visits": {f"E5M{k}": v for k, v in visits.items()},
        "bit_path": [h["bits"] for h in history],
        "losses": [round(h["loss"], 5) for h in history],
        "metrics": rows_to_json(metrics),
    }
    print(format_table(metrics, f"== {name} (train {train_s:.0f}s, visits {visits})"), flush=True)
    return record, metrics


def _members(model, floors: dict) -> list[tuple[str, ...]]:
    """The HF linears each floored (exported) layer name stands for."""
    from otaro_export.reconstruction import export_units

    units = {u.name: u.members for u in export_units(model)}
    return [units.get(n, (n,)) for n in floors]


def markdown_table(results: dict, key: str, fmt: str) -> str:
    names = list(results)
    precisions = [r["precision"] for r in results[names[0]]["metrics"]]
    lines = ["| run | " + " | ".join(precisions) + " |", "|---|" + "---|" * len(precisions)]
    for name in names:
        cells = [format(r[key], fmt) for r in results[name]["metrics"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(out: Path, results: dict, setup: dict) -> None:
    (out / "results.json").write_text(json.dumps({"setup": setup, "runs": results}, indent=2))
    md = [
        "# OTARo tuning experiment",
        "",
        "```",
        json.dumps(setup, indent=2),
        "```",
        "",
        "## KL to FP teacher (nats/token, lower is better)",
        markdown_table(results, "kl", ".4f"),
        "",
        "## top-1 agreement with FP teacher (higher is better)",
        markdown_table(results, "top1", ".3f"),
        "",
        "## perplexity of the eval answers",
        markdown_table(results, "ppl", ".3f"),
        "",
    ]
    (out / "results.md").write_text("\n".join(md))
    from otaro_export.train.evaluation import PrecisionMetrics

    plot_png(
        {n: [PrecisionMetrics(**m) for m in r["metrics"]] for n, r in results.items()},
        out / "results.png",
        title=f"{setup['model']}: {setup['steps']} steps",
    )


def cached_samples(cache: str | None, name: str, make):
    if cache is None:
        return make()
    path = Path(cache) / f"{name}_samples.json"
    if path.is_file():
        return load_saved_samples(path)
    samples = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_samples(samples, path)
    return samples


def merge(dirs: list[str], out: Path) -> None:
    runs: dict = {}
    setup, setup_trained = None, False
    for d in dirs:
        data = json.loads((Path(d) / "results.json").read_text())
        trained = any(r["config"]["method"] != "ptq" for r in data["runs"].values())
        # The budget shown is the trained runs' (a ptq-only directory records the script defaults).
        if setup is None or (trained and not setup_trained):
            setup, setup_trained = data["setup"], trained
        runs.update(data["runs"])
    order = list(runs)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, {n: runs[n] for n in order}, setup)
    print((out / "results.md").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", default=os.environ.get("OUT", "tune_experiment_out"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (SGD rows set their own)")
    ap.add_argument(
        "--sgd-lr", type=float, default=1e-3, help="SGD learning rate of the rows that do not set their own"
    )
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD momentum of those rows")
    ap.add_argument("--lr-schedule", default="constant", choices=("constant", "cosine"))
    ap.add_argument("--warmup-steps", type=int, default=0)
    ap.add_argument("--num-samples", type=int, default=40)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--eval-samples", type=int, default=12)
    ap.add_argument("--eval-tokens", type=int, default=64)
    ap.add_argument("--laa-interval", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of: " + ", ".join(CONFIGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples-cache", default=None, help="directory to save/reuse the generated samples")
    ap.add_argument(
        "--teacher-cache-gib",
        type=float,
        default=DEFAULT_CACHE_BYTES / 2**30,
        help="FP teacher log-probs up to this size are computed once (float16); larger sets rerun the teacher each step",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--merge", nargs="+", default=None, help="results directories to combine into --out")
    ap.add_argument("--tag", default="", help="suffix for the run names in the results (e.g. ' lr2e-5')")
    ap.add_argument(
        "--reconstruction",
        default="floor",
        choices=sefp.RECONSTRUCTION_RULES,
        help="rule every row trains and is evaluated through (export default: fitted)",
    )
    ap.add_argument(
        "--exponents", default="floor", choices=sefp.EXPONENT_RULES, help="group exponent rule (export default: search)"
    )
    ap.add_argument(
        "--layer-floors",
        default="none",
        choices=("none", "auto"),
        help="auto: the export's per-layer precision floors, planned once on the untuned model (export default)",
    )
    ap.add_argument("--floor-budget", type=float, default=None, help="with --layer-floors auto: bits E5M3 may read")
    ap.add_argument(
        "--int8-activations",
        type=int,
        default=0,
        metavar="BITS",
        help="train and evaluate E5M3..E5M<BITS> with int8 activations (ONNX export default: 4); 0: float",
    )
    ap.add_argument(
        "--lm-head",
        default="float",
        choices=("float", "sefp"),
        help="sefp: the tied embedding / lm_head quantized too, trained and evaluated (export default)",
    )
    args = ap.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out))
        return
    if args.threads:
        torch.set_num_threads(args.threads)

    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    rule = Rule(
        args.reconstruction, args.exponents, args.layer_floors, args.lm_head, args.floor_budget, args.int8_activations
    )
    if RTN_REFERENCE in names and not rule.paper:
        raise SystemExit(
            f"{RTN_REFERENCE!r} rounds the paper's grid: run it without --reconstruction/--exponents/--layer-floors/"
            "--int8-activations"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    loaded = load_model(args.model)
    original = loaded.model.to(args.device).eval()
    train = cached_samples(
        args.samples_cache,
        "train",
        lambda: self_distillation_samples(
            original, loaded.tokenizer, args.num_samples, args.gen_tokens, seed=args.seed, prompts=TRAIN_PROMPTS
        ),
    )
    evals = cached_samples(
        args.samples_cache,
        "eval",
        lambda: self_distillation_samples(
            original, loaded.tokenizer, args.eval_samples, args.eval_tokens, seed=args.seed + 1234, prompts=EVAL_PROMPTS
        ),
    )
    vocab = original.get_output_embeddings().weight.shape[0]
    teacher = FPTeacher(original, train, vocab, int(args.teacher_cache_gib * 2**30))
    setup = {
        "model": loaded.source,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "adamw_lr": args.lr,
        "sgd_lr": args.sgd_lr,
        "sgd_momentum": args.momentum,
        "lr_schedule": args.lr_schedule,
        "warmup_steps": args.warmup_steps,
        "laa_interval": args.laa_interval,
        "train_samples": len(train),
        "train_scored_tokens": sum(len(s.ids) - s.target_start for s in train),
        "eval_samples": len(evals),
        "eval_scored_tokens": sum(len(s.ids) - s.target_start for s in evals),
        "rule": {k: v for k, v in asdict(rule).items() if v is not None},
    }
    plan = plan_once(original, loaded.tokenizer, rule)
    if plan is not None:
        setup["floors"] = plan.floors
        setup["bits_per_weight"] = {f"E5M{b}": round(v, 4) for b, v in plan.bits_per_weight.items()}
    setup["data_prep_s"] = round(time.time() - t0, 1)
    print(json.dumps(setup, indent=2), flush=True)
    results: dict = {}
    for name in names:
        overrides = dict(CONFIGS[name])
        if overrides.get("optimizer") == "sgd":
            overrides.setdefault("lr", args.sgd_lr)
            overrides.setdefault("momentum", args.momentum)
        overrides.setdefault("lr", args.lr)
        cfg = TuneConfig(
            model=args.model,
            steps=args.steps,
            batch_size=args.batch_size,
            laa_interval=args.laa_interval,
            lr_schedule=args.lr_schedule,
            warmup_steps=args.warmup_steps,
            seed=args.seed,
            device=args.device,
            quantize_lm_head=rule.quantize_lm_head,
            reconstruction=rule.reconstruction,
            exponent_rule=rule.exponents,
            layer_floors=rule.layer_floors,
            int8_activations=rule.int8_activations,
            **overrides,
        )
        results[name + args.tag], _ = run_config(name, cfg, original, loaded, train, evals, teacher, rule, plan)
        write_results(out, results, setup)
    print(f"done in {time.time() - t0:.0f}s; results in {out}")


if __name__ == "__main__":
    main()
