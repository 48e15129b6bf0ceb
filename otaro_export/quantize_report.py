"""Per-precision weight-error report of SEFP quantization for a model (``otaro quantize``).

Three parts:

* ``rows``: the paper's encoder and decoder (``floor`` / ``floor``), SQNR per precision;
* ``rules``: the same for each reconstruction rule x exponent rule (docs/FORMAT.md §1, §3),
  plus, with input statistics, the activation-weighted SQNR (each weight error weighted by
  E[x^2] of its input column), which tracks output error better than the plain one;
* ``outliers``: per layer, how the format treats outliers: the share of groups holding an
  outlier weight (``|w| > OUTLIER_SIGMAS`` x the layer's RMS), how far the other weights of
  those groups shift at E5M3 (their relative RMS error) against the weights of outlier-free
  groups, how often the exponent is clamped to [-15, 16], and how often q saturates at 255
  (only the ``search`` encoder saturates: it lowers a group's exponent on purpose).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from otaro_export import sefp
from otaro_export.convert import select_sefp_linears
from otaro_export.packing import bytes_per_weight_read
from otaro_export.sefp import BITS_PER_WEIGHT_AT_REST, SUPPORTED_BITS, quantize

#: a weight is an outlier above this many RMS of its layer
OUTLIER_SIGMAS = 6.0
#: (reconstruction rule, exponent rule) pairs compared by default; the first is the paper's
DEFAULT_CHOICES = (("floor", "floor"), ("center", "floor"), ("fitted", "floor"), ("fitted", "search"))


@dataclass
class PrecisionRow:
    bits: int
    sqnr_db: float
    rel_rmse: float
    bits_per_weight_read: float


@dataclass
class RuleRow:
    rule: str
    exponent_rule: str
    bits: int
    sqnr_db: float
    weighted_sqnr_db: float | None  # activation-weighted; None without input statistics


@dataclass
class LayerOutliers:
    name: str
    groups: int
    outlier_group_share: float  # groups holding at least one outlier weight
    shift_in_outlier_groups: float  # E5M3 relative RMS error of the non-outlier weights of those groups
    shift_elsewhere: float  # E5M3 relative RMS error of the weights of outlier-free groups
    exponent_clamped_share: float  # nonzero groups whose floor(log2 max) fell outside [-15, 16]
    zero_groups: int
    lowered_share: float  # groups the search encoder gave exponent e0 - 1
    saturated_share: float  # weights whose q saturates at 255 under the search encoder


@dataclass
class QuantizationReport:
    num_layers: int
    num_weights: int
    quantize_seconds: float
    rows: list[PrecisionRow] = field(default_factory=list)
    rules: list[RuleRow] = field(default_factory=list)
    outliers: list[LayerOutliers] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "num_weights": self.num_weights,
            "quantize_seconds": self.quantize_seconds,
            "bits_per_weight_at_rest": BITS_PER_WEIGHT_AT_REST,
            "precisions": [asdict(row) for row in self.rows],
            "rules": [asdict(row) for row in self.rules],
            "outlier_sigmas": OUTLIER_SIGMAS,
            "outliers": [asdict(row) for row in self.outliers],
        }

    def to_table(self, max_outlier_rows: int = 12) -> str:
        lines = [
            f"SEFP: {self.num_layers} layers, {self.num_weights / 1e6:.1f}M weights, "
            f"quantized in {self.quantize_seconds:.2f}s; {BITS_PER_WEIGHT_AT_REST} bits/weight at rest (one file, all precisions)",
            f"{'precision':<10}{'SQNR dB':>10}{'rel RMSE':>11}{'bits/w read':>13}{'vs fp16':>9}",
        ]
        for r in self.rows:
            lines.append(
                f"{'E5M' + str(r.bits):<10}{r.sqnr_db:>10.2f}{r.rel_rmse:>11.4f}"
                f"{r.bits_per_weight_read:>13.3f}{r.bits_per_weight_read / 16:>9.3f}"
            )
        if self.rules:
            weighted = any(r.weighted_sqnr_db is not None for r in self.rules)
            lines += [
                "",
                "SQNR dB per reconstruction rule / exponent rule"
                + (" (activation-weighted in [])" if weighted else ""),
            ]
            choices = list(dict.fromkeys((r.rule, r.exponent_rule) for r in self.rules))
            bits = sorted({r.bits for r in self.rules})
            lines.append(f"{'rule / exponents':<22}" + "".join(f"{'E5M' + str(b):>16}" for b in bits))
            for rule, exp_rule in choices:
                cells = []
                for b in bits:
                    r = next(x for x in self.rules if (x.rule, x.exponent_rule, x.bits) == (rule, exp_rule, b))
                    extra = "" if r.weighted_sqnr_db is None else f" [{r.weighted_sqnr_db:.1f}]"
                    cells.append(f"{r.sqnr_db:.1f}{extra}".rjust(16))
                lines.append(f"{rule + ' / ' + exp_rule:<22}" + "".join(cells))
        if self.outliers:
            total_groups = sum(o.groups for o in self.outliers)
            share = sum(o.outlier_group_share * o.groups for o in self.outliers) / total_groups
            lines += [
                "",
                f"outliers (|w| > {OUTLIER_SIGMAS:g} x layer RMS): {share:.2%} of groups hold one; "
                "E5M3 rel. RMS error of the other weights in those groups vs in outlier-free groups",
                f"{'layer':<40}{'groups':>8}{'outl.grp':>9}{'shift in':>10}{'elsewhere':>10}"
                f"{'e clamp':>9}{'lowered':>9}{'q=255':>8}",
            ]
            worst = sorted(self.outliers, key=lambda o: -o.shift_in_outlier_groups)[:max_outlier_rows]
            for o in worst:
                lines.append(
                    f"{o.name[-40:]:<40}{o.groups:>8}{o.outlier_group_share:>9.2%}{o.shift_in_outlier_groups:>10.3f}"
                    f"{o.shift_elsewhere:>10.3f}{o.exponent_clamped_share:>9.2%}{o.lowered_share:>9.2%}{o.saturated_share:>8.3%}"
                )
            if len(self.outliers) > len(worst):
                lines.append(f"({len(self.outliers) - len(worst)} more layers in the JSON report)")
        return "\n".join(lines)


def _sqnr(signal: float, noise: float) -> float:
    return float("inf") if noise == 0 else 10 * math.log10(signal / noise)


def layer_outliers(name: str, w: torch.Tensor, searched: sefp.SEFPWeight | None = None) -> LayerOutliers:
    """Outlier statistics of one float weight ``[N, K]`` (``searched``: its ``search``-encoder encoding)."""
    w = w.detach().to(torch.float32)
    groups = sefp._grouped(w)
    n, g, size = groups.shape
    valid = sefp._grouped(torch.ones_like(w)).bool()  # padding is not a weight
    rms = float(w.pow(2).mean().sqrt())
    outlier = (groups.abs() > OUTLIER_SIGMAS * rms) & valid
    has_outlier = outlier.any(-1)
    q = quantize(w)
    err = (groups - sefp._grouped(q.dequantize(3))).pow(2)
    inside = valid & has_outlier.unsqueeze(-1) & ~outlier
    elsewhere = valid & ~has_outlier.unsqueeze(-1)

    def rel(mask: torch.Tensor) -> float:
        signal = float(groups.pow(2)[mask].sum())
        return math.sqrt(float(err[mask].sum()) / signal) if signal > 0 else 0.0

    amax = groups.abs().amax(-1)
    nonzero = amax > 0
    _, p = torch.frexp(amax)
    raw = p.to(torch.int32) - 1
    clamped = nonzero & ((raw < sefp.EXPONENT_MIN) | (raw > sefp.EXPONENT_MAX))
    lowered = saturated = 0.0
    if searched is not None:
        lowered = float((searched.exponents != q.exponents).float().mean())
        saturated = float((searched.magnitudes == 255)[:, : w.shape[1]].float().mean())
    return LayerOutliers(
        name=name,
        groups=n * g,
        outlier_group_share=float(has_outlier.float().mean()),
        shift_in_outlier_groups=rel(inside),
        shift_elsewhere=rel(elsewhere),
        exponent_clamped_share=float(clamped.sum()) / max(1, int(nonzero.sum())),
        zero_groups=int((~nonzero).sum()),
        lowered_share=lowered,
        saturated_share=saturated,
    )


def _layers(model: nn.Module, quantize_lm_head: bool) -> list[tuple[str, list[str]]]:
    """(name, HF members) of each exported layer: the packed units for Llama-family models."""
    from otaro_export.reconstruction import export_units

    names = select_sefp_linears(model, quantize_lm_head)
    try:
        units = export_units(model, include_lm_head=quantize_lm_head)
    except ValueError:
        units = []
    covered = {m for u in units for m in u.members}
    if set(names) <= covered:
        return [(u.name, list(u.members)) for u in units]
    return [(n, [n]) for n in names]


def quantization_report(
    model: nn.Module,
    quantize_lm_head: bool = False,
    progress: bool = False,
    choices=DEFAULT_CHOICES,
    input_stats: dict | None = None,
    outliers: bool = True,
) -> QuantizationReport:
    """Quantize every SEFP layer (model left unchanged) and aggregate error per precision and rule.

    SQNR is aggregated over all layers: 10*log10(sum ||W||^2 / sum ||W - W_k||^2).
    ``input_stats`` (``calibration.collect_input_stats`` by HF linear name) weights the
    ``fitted`` levels and the exponent ``search``, and adds the activation-weighted SQNR.
    """
    from otaro_export.reconstruction import quantize_layer

    layers = _layers(model, quantize_lm_head)
    signal = 0.0
    noise = {b: 0.0 for b in SUPPORTED_BITS}
    rule_noise = {(c, b): [0.0, 0.0] for c in choices for b in SUPPORTED_BITS}
    weighted_signal = 0.0
    num_weights = 0
    elapsed = 0.0
    report = QuantizationReport(0, 0, 0.0)
    iterator = layers
    if progress:
        from tqdm import tqdm

        iterator = tqdm(layers, desc="SEFP quantize", unit="layer")
    with torch.no_grad():
        for name, members in iterator:
            w = torch.cat([model.get_submodule(m).weight.detach().to(torch.float32) for m in members])
            t0 = time.perf_counter()
            q = quantize(w, name=f"{name}.weight")
            elapsed += time.perf_counter() - t0
            w64 = w.to(torch.float64)
            signal += float(w64.pow(2).sum())
            num_weights += w.numel()
            for b in SUPPORTED_BITS:
                noise[b] += float((w64 - q.dequantize(b).to(torch.float64)).pow(2).sum())
            stats = None if input_stats is None else input_stats.get(members[0])
            d = None if stats is None else stats.second_moment.to(torch.float64)
            if d is not None:
                weighted_signal += float((w64.pow(2) * d).sum())
            searched = None
            for rule, exp_rule in choices:
                enc, levels = quantize_layer(w, rule, exp_rule, None if stats is None else stats.importance(), name)
                if exp_rule == "search" and searched is None:
                    searched = enc
                for b in SUPPORTED_BITS:
                    diff2 = (w64 - enc.dequantize(b, levels).to(torch.float64)).pow(2)
                    acc = rule_noise[((rule, exp_rule), b)]
                    acc[0] += float(diff2.sum())
                    if d is not None:
                        acc[1] += float((diff2 * d).sum())
            if outliers:
                if searched is None:
                    searched = quantize(w, name, "search")
                report.outliers.append(layer_outliers(name, w, searched))
    for b in SUPPORTED_BITS:
        rel = (noise[b] / signal) ** 0.5 if signal > 0 else 0.0
        report.rows.append(PrecisionRow(b, _sqnr(signal, noise[b]), rel, bytes_per_weight_read(b) * 8))
    for (rule, exp_rule), b in rule_noise:
        plain, weighted = rule_noise[((rule, exp_rule), b)]
        report.rules.append(
            RuleRow(rule, exp_rule, b, _sqnr(signal, plain), _sqnr(weighted_signal, weighted) if input_stats else None)
        )
    report.num_layers = len(layers)
    report.num_weights = num_weights
    report.quantize_seconds = elapsed
    return report
