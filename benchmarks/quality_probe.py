"""Quality probe: KL(FP || Q) per precision for reconstruction rules, exponent rules and precision floors.

Weights are dequantized in torch and copied into the float model (no export), so
one configuration costs a few forward passes. The measurement is `otaro eval`'s:
the FP model's sampled answers (seed 1234) to ``EVAL_PROMPTS``, KL(FP || Q) in
nats per scored token and top-1 agreement. The SEFP layers are the export's
packed units (qkv_proj, o_proj, gate_up_proj, down_proj per block, plus the tied
embedding/lm_head when ``lm_head`` is SEFP: quantizing the tied weight changes
both the embedding rows and the output projection, as the export does).

    python benchmarks/quality_probe.py --out results/quality --experiments rules,why,kinds,floors

Experiments (``--experiments``, comma-separated):

* ``rules``: floor / center / fitted (weighted and unweighted) x exponent floor / search, plus
  round-to-nearest per precision (a reference, not nestable), lm_head float and SEFP;
* ``why``: centered E5M3 vs round-to-nearest E5M3, per layer kind: weight SQNR, activation-weighted
  SQNR, output SQNR on calibration inputs, the share of output error in its mean (bias), the
  q_k = 0 bin, and outlier statistics;
* ``kinds``: one layer kind (or block of depth) at E5M3, the rest at E5M8, under the chosen rule;
* ``floors``: per-layer precision floors from ``reconstruction.recommend_floors`` and the bytes read per token.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

from otaro_export import sefp
from otaro_export.calibration import calibration_samples, collect_input_stats
from otaro_export.models import load_model
from otaro_export.reconstruction import export_units, quantize_layer, split_unit, unit_weight
from otaro_export.train.tune_data import EVAL_PROMPTS, collate, load_saved_samples, save_samples
from otaro_export.train.tune_data import self_distillation_samples as sample_answers

EVAL_SEED = 1234


class Probe:
    """The float model, its teacher log-probs on the eval samples, and a way to score replaced weights."""

    def __init__(self, model, samples, batch_size: int = 4):
        self.model = model.eval()
        self.samples = samples
        self.batch_size = batch_size
        self.batches = [
            collate(samples, list(range(s, min(s + batch_size, len(samples)))))
            for s in range(0, len(samples), batch_size)
        ]
        with torch.no_grad():
            self.teacher = [self._logits(b).log_softmax(-1) for b in self.batches]
        self.tokens = sum(int(b.loss_mask.sum()) for b in self.batches)

    def _logits(self, batch) -> torch.Tensor:
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        return out[batch.loss_mask].float()

    @torch.no_grad()
    def score(self, weights: dict[str, torch.Tensor]) -> dict:
        """KL(FP || model with ``weights`` swapped in) and top-1 agreement; the model is restored after."""
        saved = {}
        for name, w in weights.items():
            param = self.model.get_submodule(name).weight
            saved[name] = param.detach().clone()
            param.copy_(w)
        try:
            kl = top1 = 0.0
            for batch, t in zip(self.batches, self.teacher):
                s = self._logits(batch).log_softmax(-1)
                kl += float((t.exp() * (t - s)).sum())
                top1 += float((s.argmax(-1) == t.argmax(-1)).sum())
        finally:
            for name, w in saved.items():
                self.model.get_submodule(name).weight.copy_(w)
        return {"kl": max(0.0, kl / self.tokens), "top1": top1 / self.tokens}


def rtn_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Round-to-nearest at E5Mk with the floor exponents (the issue's reference; not nestable)."""
    return sefp._grid_values(w.to(torch.float32), bits, torch.round)


class Quantized:
    """Every unit of the model encoded under one (rule, exponent rule, weighting) choice."""

    cache_dir: Path | None = None
    precision_weights: tuple[float, ...] | None = None  # the search objective's; None: the default

    def __init__(self, model, units, rule, exponent_rule, stats=None):
        self.units = units
        self.model = model
        self.encoded = {}
        path = None
        if self.cache_dir is not None:
            tag = "" if self.precision_weights is None else "_w" + "-".join(f"{x:g}" for x in self.precision_weights)
            path = self.cache_dir / f"enc_{rule}_{exponent_rule}_{'act' if stats else 'plain'}{tag}.pt"
            if path.is_file():
                self.encoded = torch.load(path, weights_only=False)
        missing = [u for u in units if u.name not in self.encoded]
        for unit in missing:
            w = unit_weight(model, unit)
            importance = None if stats is None else stats[unit.members[0]].importance()
            extra = {} if self.precision_weights is None else {"precision_weights": self.precision_weights}
            self.encoded[unit.name] = quantize_layer(w, rule, exponent_rule, importance, name=unit.name, **extra)
        if path is not None and missing:
            torch.save(self.encoded, path)

    def weights(self, bits_of) -> dict[str, torch.Tensor]:
        """HF member weights, each unit dequantized at ``bits_of(unit)`` (None keeps it float)."""
        out = {}
        for unit in self.units:
            bits = bits_of(unit)
            if bits is None:
                continue
            q, levels = self.encoded[unit.name]
            out.update(split_unit(unit, self.model, q.dequantize(bits, levels)))
        return out


def load_eval_samples(loaded, cache: Path, num: int, gen_tokens: int):
    path = cache / f"eval_samples_{num}x{gen_tokens}.json"
    if path.is_file():
        return load_saved_samples(path)
    samples = sample_answers(loaded.model, loaded.tokenizer, num, gen_tokens, seed=EVAL_SEED, prompts=EVAL_PROMPTS)
    save_samples(samples, path)
    return samples


def load_calibration_samples(loaded, cache: Path, args):
    path = cache / f"calib_samples_{args.calib_samples}x{args.calib_tokens}.json"
    if path.is_file():
        return load_saved_samples(path)
    samples = calibration_samples(loaded.model, loaded.tokenizer, args.calib_samples, args.calib_tokens)
    save_samples(samples, path)
    return samples


def calibration_stats(loaded, units, calib, cache: Path, args):
    path = cache / f"calib_stats_{args.calib_samples}x{args.calib_tokens}.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)
    names = sorted({u.members[0] for u in units})
    stats = collect_input_stats(loaded.model, calib, names)
    torch.save(stats, path)
    return stats


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------- experiments


def experiment_rules(probe, model, units, stats, args) -> dict:
    choices = [
        ("floor", "floor", False),
        ("center", "floor", False),
        ("fitted", "floor", False),
        ("fitted", "floor", True),
        ("center", "search", False),
        ("center", "search", True),
        ("fitted", "search", False),
        ("fitted", "search", True),
    ]
    if args.rule_choices:
        wanted = args.rule_choices.split(",")
        choices = sorted((c for c in choices if label(*c) in wanted), key=lambda c: wanted.index(label(*c)))
    rows = {}
    partial = Path(args.out) / "rules_partial.json"
    decoder = [u for u in units if u.kind != "lm_head"]
    for lm_head in args.lm_head_scopes:
        scope = units if lm_head else decoder
        suffix = " +lm_head" if lm_head else ""
        for bits in args.bits if args.rtn else ():
            name = "RTN (reference)" + suffix
            weights = {}
            for unit in scope:
                weights.update(split_unit(unit, model, rtn_weight(unit_weight(model, unit), bits)))
            rows.setdefault(name, {})[bits] = probe.score(weights)
            log(f"{name} E5M{bits}: {rows[name][bits]}")
            partial.write_text(json.dumps(rows, indent=2))
        for rule, exp_rule, weighted in choices:
            t0 = time.perf_counter()
            quant = Quantized(model, scope, rule, exp_rule, stats if weighted else None)
            name = label(rule, exp_rule, weighted) + suffix
            log(f"{name}: encoded in {time.perf_counter() - t0:.1f}s")
            for bits in args.bits:
                rows.setdefault(name, {})[bits] = probe.score(quant.weights(lambda u, b=bits: b))
                log(f"{name} E5M{bits}: {rows[name][bits]}")
                partial.write_text(json.dumps(rows, indent=2))
    return rows


def label(rule: str, exponent_rule: str, weighted: bool) -> str:
    return f"{rule}{'(act)' if weighted and rule == 'fitted' else ''}/exp-{exponent_rule}{'(act)' if weighted and exponent_rule == 'search' else ''}"


def capture_inputs(model, samples, names, max_tokens: int = 512) -> dict[str, torch.Tensor]:
    """Up to ``max_tokens`` attended input rows of each named linear, on calibration text."""
    captured: dict[str, list] = {n: [] for n in names}
    mask_box = []

    def hook_for(name):
        def hook(module, args):
            x = args[0][mask_box[0]].detach().to(torch.float32)
            have = sum(t.shape[0] for t in captured[name])
            if have < max_tokens:
                captured[name].append(x[: max_tokens - have])

        return hook

    handles = [model.get_submodule(n).register_forward_pre_hook(hook_for(n)) for n in names]
    with torch.no_grad():
        for s in range(0, len(samples), 4):
            batch = collate(samples, list(range(s, min(s + 4, len(samples)))))
            mask_box[:] = [batch.attention_mask.bool()]
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for h in handles:
        h.remove()
    return {n: torch.cat(v) for n, v in captured.items()}


def experiment_why(probe, model, units, stats, args, calib) -> dict:
    """Centered truncation vs round-to-nearest at E5M3: where the two differ beyond weight SQNR."""
    bits = 3
    decoder = [u for u in units if u.kind != "lm_head"]
    inputs = capture_inputs(model, calib, sorted({u.members[0] for u in decoder}))
    center = Quantized(model, decoder, "center", "floor")
    kinds: dict[str, dict] = {}
    for unit in decoder:
        w = unit_weight(model, unit)
        x = inputs[unit.members[0]]
        d = stats[unit.members[0]].importance()
        q, levels = center.encoded[unit.name]
        approx = {"center": q.dequantize(bits, levels), "rtn": rtn_weight(w, bits)}
        k = kinds.setdefault(unit.kind, {"weights": 0})
        k["weights"] += w.numel()
        y = x @ w.T
        signal = {"w": float(w.pow(2).sum()), "wd": float((w.pow(2) * d).sum()), "y": float(y.pow(2).sum())}
        for key, val in signal.items():
            k[f"signal_{key}"] = k.get(f"signal_{key}", 0.0) + val
        mu = x.mean(0)
        index = q.magnitudes[:, : q.in_features].to(torch.int64) >> (8 - bits)
        bin0 = index == 0
        k["bin0"] = k.get("bin0", 0) + int(bin0.sum())
        for name, wq in approx.items():
            dw = w - wq
            dy = x @ dw.T
            k[f"{name}_w"] = k.get(f"{name}_w", 0.0) + float(dw.pow(2).sum())
            k[f"{name}_wd"] = k.get(f"{name}_wd", 0.0) + float((dw.pow(2) * d).sum())
            k[f"{name}_y"] = k.get(f"{name}_y", 0.0) + float(dy.pow(2).sum())
            # the mean of the output error over tokens: a bias every token sees
            k[f"{name}_ybias"] = k.get(f"{name}_ybias", 0.0) + float((dw @ mu).pow(2).sum()) * x.shape[0]
            k[f"{name}_bin0_wd"] = k.get(f"{name}_bin0_wd", 0.0) + float((dw.pow(2) * d)[bin0].sum())
            # error along the weight itself: a gain change of the layer, (dw . w) / (w . w)
            k[f"{name}_gain"] = k.get(f"{name}_gain", 0.0) - float((dw * w).sum())
        # outliers: input columns with E[x^2] far above the median
        ratio = d / d.median()
        k["max_col_ratio"] = max(k.get("max_col_ratio", 0.0), float(ratio.max()))
        k["cols_over_100x"] = k.get("cols_over_100x", 0) + int((ratio > 100).sum())
    table = {}
    for kind, k in kinds.items():
        row = {
            "weights": k["weights"],
            "bin0_share": k["bin0"] / k["weights"],
            "max_col_ratio": k["max_col_ratio"],
            "cols_over_100x": k["cols_over_100x"],
        }
        for name in ("center", "rtn"):
            row[f"{name}_sqnr_w"] = 10 * math.log10(k["signal_w"] / k[f"{name}_w"])
            row[f"{name}_sqnr_wd"] = 10 * math.log10(k["signal_wd"] / k[f"{name}_wd"])
            row[f"{name}_sqnr_y"] = 10 * math.log10(k["signal_y"] / k[f"{name}_y"])
            row[f"{name}_bias_share"] = k[f"{name}_ybias"] / k[f"{name}_y"]
            row[f"{name}_bin0_share_of_wd"] = k[f"{name}_bin0_wd"] / k[f"{name}_wd"]
            row[f"{name}_gain"] = -k[f"{name}_gain"] / k["signal_w"]
        table[kind] = row
        log(f"why {kind}: {json.dumps({a: round(b, 4) for a, b in row.items()})}")
    return table


def experiment_kinds(probe, model, units, stats, args) -> dict:
    """One kind (or one block of depth) at E5M3, the rest at E5M8, under ``--rule``/``--exponent-rule``."""
    rule, exp_rule = args.rule, args.exponent_rule
    quant = Quantized(model, units, rule, exp_rule, stats)
    rows = {}
    kinds = sorted({u.kind for u in units})
    depth = max(u.layer_index for u in units if u.layer_index is not None) + 1
    blocks = [(s, min(s + 5, depth)) for s in range(0, depth, 5)]
    probes = [(f"kind {k}", lambda u, k=k: u.kind == k) for k in kinds]
    probes += [
        (f"layers {a}-{b - 1}", lambda u, a=a, b=b: u.layer_index is not None and a <= u.layer_index < b)
        for a, b in blocks
    ]
    probes.append(("all", lambda u: True))
    for name, chosen in probes:
        rows[name] = probe.score(quant.weights(lambda u, c=chosen: 3 if c(u) else 8))
        log(f"kinds {rule}/{exp_rule}: {name} at E5M3: {rows[name]}")
    return rows


def experiment_floors(probe, model, units, stats, args, calib, cache: Path) -> dict:
    """Fisher-predicted vs measured KL of floor plans at several byte budgets (``--rule`` / ``--exponent-rule``)."""
    from otaro_export.calibration import fisher_diagonal
    from otaro_export.reconstruction import plan_floors, predicted_kl

    rule, exp_rule = args.rule, args.exponent_rule
    path = cache / f"fisher_{args.fisher_samples}x{args.calib_tokens}x{args.fisher_draws}.pt"
    members = [m for u in units for m in u.members]
    if path.is_file():
        fisher = torch.load(path, weights_only=False)
    else:
        t0 = time.perf_counter()
        fisher = fisher_diagonal(model, calib[: args.fisher_samples], members, draws=args.fisher_draws)
        torch.save(fisher, path)
        log(f"fisher diagonal in {time.perf_counter() - t0:.0f}s")
    quant = Quantized(model, units, rule, exp_rule, stats)
    sizes, sensitivity = {}, {}
    for unit in units:
        w = unit_weight(model, unit)
        q, levels = quant.encoded[unit.name]
        sizes[unit.name] = tuple(w.shape)
        sensitivity[unit.name] = predicted_kl(w, q, levels, torch.cat([fisher[m] for m in unit.members]))
    by_kind = {}
    for unit in units:
        k = by_kind.setdefault(unit.kind, {b: 0.0 for b in (3, 4, 5, 8)})
        for b in k:
            k[b] += sensitivity[unit.name][b]
    log(f"predicted KL by kind: {json.dumps(by_kind)}")
    rows = {"predicted_by_kind": by_kind}
    decoder_sizes = {n: v for n, v in sizes.items() if n != "lm_head"}
    scopes = {"decoder": decoder_sizes, "decoder+lm_head": sizes}
    for scope, scope_sizes in ((k, scopes[k]) for k in args.floor_scopes):
        for budget in args.floor_budgets:
            plan = plan_floors(scope_sizes, sensitivity, budget)
            key = f"{scope} budget {budget}"
            row = {
                "floors": plan.floors,
                "bits_per_weight": plan.bits_per_weight,
                "bytes_per_token": plan.bytes_per_token,
                "predicted_kl": plan.predicted_kl,
            }
            for bits in args.floor_bits:
                chosen = {u.name for u in units if u.name in scope_sizes}
                row[f"measured E5M{bits}"] = probe.score(
                    quant.weights(
                        lambda u, b=bits, p=plan, c=chosen: p.effective_bits(u.name, b) if u.name in c else None
                    )
                )
            rows[key] = row
            kinds = {}
            for name in plan.floors:
                kinds[name.rsplit(".", 1)[-1]] = kinds.get(name.rsplit(".", 1)[-1], 0) + 1
            log(
                f"floors {key}: {len(plan.floors)} floors {kinds}, {plan.bits_per_weight[3]:.3f} bits/w at E5M3, "
                f"predicted {plan.predicted_kl[3]:.3f}, measured {[row.get(f'measured E5M{b}') for b in (3, 4)]}"
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "results/quality"))
    parser.add_argument(
        "--cache", default=None, help="where eval samples and calibration stats are cached (default --out)"
    )
    parser.add_argument("--experiments", default="rules,why,kinds")
    parser.add_argument("--bits", default="3,4,8")
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--gen-tokens", type=int, default=64)
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--calib-tokens", type=int, default=48)
    parser.add_argument("--rule", default="fitted")
    parser.add_argument("--exponent-rule", default="search")
    parser.add_argument("--rule-choices", default=None, help="subset of the rules experiment's labels")
    parser.add_argument("--floor-budgets", default="4.5,5.0", help="E5M3 bits/weight budgets for floors")
    parser.add_argument("--fisher-samples", type=int, default=8, help="calibration samples the Fisher uses")
    parser.add_argument("--fisher-draws", type=int, default=1, help="label draws per sample for the Fisher")
    parser.add_argument("--floor-bits", default="3,4", help="call precisions measured with floors")
    parser.add_argument("--floor-scopes", default="decoder+lm_head", help="decoder and/or decoder+lm_head")
    parser.add_argument("--lm-head", default="float,sefp", help="rules experiment: lm_head float, SEFP, or both")
    parser.add_argument("--no-rtn", dest="rtn", action="store_false", help="rules experiment: skip the RTN reference")
    parser.add_argument("--search-weights", default=None, help="the search objective's weights for E5M3..E5M8")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    args.bits = [int(b) for b in args.bits.split(",")]
    args.floor_budgets = [float(b) for b in args.floor_budgets.split(",")]
    args.floor_scopes = args.floor_scopes.split(",")
    args.floor_bits = [int(b) for b in args.floor_bits.split(",")]
    args.lm_head_scopes = [{"float": False, "sefp": True}[x] for x in args.lm_head.split(",")]
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    loaded = load_model("default")
    model = loaded.model.eval()
    units = export_units(model)
    samples = load_eval_samples(loaded, cache, args.samples, args.gen_tokens)
    calib = load_calibration_samples(loaded, cache, args)
    stats = calibration_stats(loaded, units, calib, cache, args)
    Quantized.cache_dir = cache
    if args.search_weights:
        Quantized.precision_weights = tuple(float(x) for x in args.search_weights.split(","))
    probe = Probe(model, samples)
    log(f"{len(samples)} eval samples, {probe.tokens} scored tokens; {len(units)} SEFP units")
    results_path = out / "quality_probe.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for experiment in args.experiments.split(","):
        t0 = time.perf_counter()
        if experiment == "rules":
            results["rules"] = {**results.get("rules", {}), **experiment_rules(probe, model, units, stats, args)}
        elif experiment == "why":
            results["why"] = experiment_why(probe, model, units, stats, args, calib)
        elif experiment == "floors":
            key = f"floors {args.rule}/{args.exponent_rule}"
            results[key] = experiment_floors(probe, model, units, stats, args, calib, cache)
        elif experiment == "kinds":
            key = f"kinds {args.rule}/{args.exponent_rule}"
            results[key] = experiment_kinds(probe, model, units, stats, args)
        else:
            raise SystemExit(f"unknown experiment {experiment!r}")
        log(f"{experiment} done in {time.perf_counter() - t0:.0f}s")
        results_path.write_text(json.dumps(results, indent=2, default=str))
    log(f"wrote {results_path}")


if __name__ == "__main__":
    main()
