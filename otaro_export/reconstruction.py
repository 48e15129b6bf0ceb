"""Reconstruction rules and exponent choice for one exported SEFP linear (docs/FORMAT.md §1, §3).

The stored bits (signs, M8 magnitudes, exponents) and the nesting never change;
a reconstruction rule is a per-layer ``levels`` table ``[6, 256]`` that maps the
truncated magnitude ``q_k`` of E5Mk to ``levels[k-3, q_k >> (8-k)] * 2**(e-7)``:

* ``floor``: the paper's, ``j * 2**(8-k)`` (the bottom of each truncation interval);
* ``center``: the middle of each interval, ``(j + 1/2) * 2**(8-k)``, q_k = 0 included;
* ``fitted``: rows k = 3, 4 are the weighted least-squares levels of this layer,
  ``L_j = sum_i d_i u_i |w_i| / sum_i d_i u_i**2`` over the weights whose truncated
  magnitude is ``j`` (``u_i = 2**(e-7)`` of the weight's group, ``d_i = E[x_i^2]`` of its
  input column from calibration, or 1 without statistics); rows k >= 5 are ``center``.
  Each bin is independent, so this minimises ``sum_i d_i (w_i - w_hat_i)**2`` exactly.

The encoder's exponent rule is ``floor`` (the paper's) or ``search`` (per group
``e0`` or ``e0 - 1`` by a precision-weighted error, ``sefp.search_exponents``).

Entry point for the exporter, per exported (packed) linear::

    q, levels = quantize_layer(w, rule="fitted", exponent_rule="search", importance=stats.importance())
    # levels is None for ``floor`` (the paper's op); pass it to otaro::sefp_linear otherwise

``export_units(model)`` names the packed layers and their HF members, and
``recommend_floors`` returns per-layer precision floors (docs/FORMAT.md §6).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from otaro_export import sefp
from otaro_export.sefp import (
    GROUP_SIZE,
    RECONSTRUCTION_RULES,
    STORED_MANTISSA_BITS,
    SUPPORTED_BITS,
    SEFPWeight,
    center_levels,
    check_bits,
    exact_pow2,
    floor_levels,
    padded_importance,
)

#: precisions whose levels the ``fitted`` rule fits (k >= 5 keeps ``center``: its intervals are narrow)
FITTED_BITS = (3, 4)
#: what the export uses unless told otherwise (chosen by measurement, docs/QUALITY.md)
DEFAULT_RULE = "fitted"
DEFAULT_EXPONENT_RULE = "search"
#: the search objective's weight per precision E5M3..E5M8 (each relative to the layer's own error there):
#: E5M3 counts 16x, which measured E5M3 1.35 -> 1.08 for E5M8 0.0015 -> 0.0023 (docs/QUALITY.md)
DEFAULT_PRECISION_WEIGHTS: tuple[float, ...] = (16.0, 1.0, 1.0, 1.0, 1.0, 1.0)


def check_rule(rule: str) -> str:
    if rule not in RECONSTRUCTION_RULES:
        raise ValueError(f"unknown reconstruction rule {rule!r}: choose one of {', '.join(RECONSTRUCTION_RULES)}")
    return rule


def fit_levels(
    w: torch.Tensor, q: SEFPWeight, importance: torch.Tensor | None = None, bits: tuple[int, ...] = FITTED_BITS
) -> torch.Tensor:
    """The ``fitted`` table of float weight ``w`` ``[N, K]`` encoded as ``q``: rows ``bits`` fitted, others center.

    A level no weight falls in keeps its center value. Deterministic (float64 sums).
    """
    n, k = w.shape
    if (q.out_features, q.in_features) != (n, k):
        raise ValueError(f"weight is {[n, k]} but its encoding is {[q.out_features, q.in_features]}")
    levels = center_levels()
    groups = sefp._grouped(w.detach().to(torch.float64))
    mag = groups.abs().reshape(n, -1)
    step = exact_pow2(q.exponents.to(torch.int32) - (STORED_MANTISSA_BITS - 1)).to(torch.float64)
    step = step.repeat_interleave(GROUP_SIZE, dim=1)  # [N, K_pad]
    d = padded_importance(importance, k).to(torch.float64).unsqueeze(0)
    num_terms = (d * step * mag).reshape(-1)
    den_terms = (d * step * step).expand(n, -1).reshape(-1)
    for bits_k in bits:
        bits_k = check_bits(bits_k)
        width = 1 << bits_k
        index = (q.magnitudes.to(torch.int64) >> (STORED_MANTISSA_BITS - bits_k)).reshape(-1)
        num = torch.zeros(width, dtype=torch.float64).index_add_(0, index, num_terms)
        den = torch.zeros(width, dtype=torch.float64).index_add_(0, index, den_terms)
        row = bits_k - SUPPORTED_BITS[0]
        fitted = torch.where(den > 0, num / den.clamp(min=1e-300), levels[row, :width].to(torch.float64))
        levels[row, :width] = fitted.to(torch.float32)
    return sefp.check_levels(levels)


def quantize_layer(
    w: torch.Tensor,
    rule: str = DEFAULT_RULE,
    exponent_rule: str = DEFAULT_EXPONENT_RULE,
    importance: torch.Tensor | None = None,
    name: str = "weight",
    precision_weights: tuple[float, ...] = DEFAULT_PRECISION_WEIGHTS,
    int8_max_bits: int = 0,
) -> tuple[SEFPWeight, torch.Tensor | None]:
    """Encode one float ``[N, K]`` linear weight and its reconstruction table.

    ``importance``: ``[K]`` per-input-column error weights, normally
    ``calibration.InputStats.importance()`` (E[x_i^2]) of the layer's input; ``None`` weights every
    column alike. ``precision_weights``: the ``search`` objective's weight per precision E5M3..E5M8.
    Returns ``(SEFPWeight, levels)`` with ``levels = None`` for ``floor`` (the paper's
    op, no table input) and a float32 ``[6, 256]`` table otherwise. With ``exponent_rule="search"``
    the exponents are chosen under the rule's own decode (for ``fitted``: under center levels, then
    the levels are fitted to those exponents, then the exponents re-chosen under the fitted levels
    and the levels refitted once more). Deterministic. ``int8_max_bits`` (int8 activations up to that
    precision, docs/FORMAT.md §9): the table's rows E5M3..E5M``int8_max_bits`` are stored on the int8 grid
    (``activation_quant.round_levels_to_int8_grid``), so that integer kernels apply.
    """
    check_rule(rule)
    sefp.check_exponent_rule(exponent_rule)
    decode = floor_levels() if rule == "floor" else center_levels()
    q = sefp.quantize(w, name, exponent_rule, levels=decode, importance=importance, precision_weights=precision_weights)
    if rule == "floor":
        return q, None
    if rule == "center":
        levels = center_levels()
    else:
        levels = fit_levels(w, q, importance)
        if exponent_rule == "search":
            q = sefp.quantize(
                w, name, exponent_rule, levels=levels, importance=importance, precision_weights=precision_weights
            )
            levels = fit_levels(w, q, importance)
    if int8_max_bits:
        from otaro_export.activation_quant import round_levels_to_int8_grid

        levels = round_levels_to_int8_grid(levels, int8_max_bits)
    return q, levels


# ----------------------------------------------------------------------------- exported (packed) layers

_MEMBERS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "self_attn.o_proj": ("self_attn.o_proj",),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
    "mlp.down_proj": ("mlp.down_proj",),
}
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


@dataclass(frozen=True)
class ExportUnit:
    """One exported SEFP linear: HF member linears concatenated along N (they share one input)."""

    name: str
    members: tuple[str, ...]

    @property
    def kind(self) -> str:
        """``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj`` or ``lm_head``."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def layer_index(self) -> int | None:
        match = _LAYER.match(self.name)
        return int(match.group(1)) if match else None


def export_units(model: nn.Module, include_lm_head: bool = True) -> list[ExportUnit]:
    """The packed SEFP layers of a Llama-family HF model, in model order (names as in the manifest)."""
    from otaro_export.convert import decoder_layers

    layers = decoder_layers(model)
    if layers is None:
        raise ValueError("model has no decoder blocks at model.model.layers")
    units = []
    for i in range(len(layers)):
        prefix = f"model.layers.{i}."
        for unit, members in _MEMBERS.items():
            full = tuple(prefix + m for m in members)
            if all(isinstance(_get(model, m), nn.Linear) for m in full):
                units.append(ExportUnit(prefix + unit, full))
    if include_lm_head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        units.append(ExportUnit("lm_head", ("lm_head",)))
    return units


def _get(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def unit_weight(model: nn.Module, unit: ExportUnit) -> torch.Tensor:
    """The packed float weight ``[sum N_m, K]`` of a unit (members concatenated along N)."""
    return torch.cat([model.get_submodule(m).weight.detach().to(torch.float32) for m in unit.members], dim=0)


def split_unit(unit: ExportUnit, model: nn.Module, packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inverse of :func:`unit_weight`: the rows of each member."""
    sizes = [model.get_submodule(m).out_features for m in unit.members]
    return dict(zip(unit.members, torch.split(packed, sizes, dim=0)))


# ----------------------------------------------------------------------------- per-layer precision floors

#: ``--layer-floors`` of export and tune: the automatic plan (:func:`floor_plan`) or no floors
FLOOR_POLICIES = ("auto", "none")
#: the floor a sensitive layer gets: E5M5 reads the same planes (bytes) as E5M4 (docs/FORMAT.md §4)
FLOOR_BITS = 5
#: default budget: E5M3 with floors reads at most this many weight bits per weight on average (Q4_0's 4.5)
DEFAULT_FLOOR_BUDGET_BITS = 4.5


@dataclass
class FloorPlan:
    """Per-layer precision floors (docs/FORMAT.md §6) and what each call precision then costs."""

    floors: dict[str, int]  # exported layer name -> min_bits (only layers that have a floor)
    bits_per_weight: dict[int, float]  # call bits -> weight bits read per SEFP weight per token, floors applied
    bytes_per_token: dict[int, float]  # call bits -> SEFP weight bytes read per token, floors applied
    predicted_kl: dict[int, float]  # call bits -> sum of the layers' Fisher-predicted KL, floors applied

    def effective_bits(self, unit: str, bits: int) -> int:
        return max(check_bits(bits), self.floors.get(unit, SUPPORTED_BITS[0]))

    def to_dict(self) -> dict:
        """JSON-ready (precision keys as strings); :meth:`from_dict` reads it back."""
        per_bits = ("bits_per_weight", "bytes_per_token", "predicted_kl")
        return {"floors": dict(self.floors), **{k: {str(b): v for b, v in getattr(self, k).items()} for k in per_bits}}

    @staticmethod
    def from_dict(data: dict) -> FloorPlan:
        """The plan :meth:`to_dict` wrote (e.g. into a tuning checkpoint); ValueError if it is malformed."""
        try:
            floors = {str(name): check_bits(int(bits)) for name, bits in data["floors"].items()}
            per_bits = {
                key: {check_bits(int(b)): float(v) for b, v in data[key].items()}
                for key in ("bits_per_weight", "bytes_per_token", "predicted_kl")
            }
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a floor plan ({exc!r})") from exc
        return FloorPlan(floors, **per_bits)


def unit_bytes_read(rows: int, in_features: int, bits: int) -> float:
    """Weight bytes one token reads from a packed ``[rows, K]`` SEFP layer at precision ``bits``."""
    from otaro_export.packing import bytes_per_weight_read

    return rows * sefp.padded_in_features(in_features) * bytes_per_weight_read(bits)


def predicted_kl(w: torch.Tensor, q: SEFPWeight, levels: torch.Tensor | None, fisher: torch.Tensor) -> dict[int, float]:
    """``1/2 * sum F * (w - w_hat_k)**2`` per precision: the layer's second-order share of KL per token."""
    out = {}
    for bits in SUPPORTED_BITS:
        diff = w.to(torch.float32) - q.dequantize(bits, levels)
        out[bits] = 0.5 * float((fisher.to(torch.float32) * diff.pow(2)).sum(dtype=torch.float64))
    return out


def plan_floors(
    sizes: dict[str, tuple[int, int]],
    sensitivity: dict[str, dict[int, float]],
    budget_bits: float = DEFAULT_FLOOR_BUDGET_BITS,
    floor_bits: int = FLOOR_BITS,
    call_bits: int = SUPPORTED_BITS[0],
) -> FloorPlan:
    """Greedy floors: raise the layers with the most predicted KL saved per extra byte at ``call_bits``.

    ``sizes``: layer -> (rows, K) of the packed weight; ``sensitivity``: layer -> {bits: predicted KL}.
    Layers are given ``floor_bits`` in order of ``(KL(call) - KL(floor)) / extra bytes`` while the
    average weight bits read at ``call_bits`` stays within ``budget_bits``. Deterministic (ties by name).
    """
    floor_bits, call_bits = check_bits(floor_bits), check_bits(call_bits)
    total_weights = sum(r * sefp.padded_in_features(k) for r, k in sizes.values())
    base = sum(unit_bytes_read(r, k, call_bits) for r, k in sizes.values())
    budget = budget_bits / 8 * total_weights
    gains = []
    for name, (rows, k) in sizes.items():
        extra = unit_bytes_read(rows, k, floor_bits) - unit_bytes_read(rows, k, call_bits)
        saved = sensitivity[name][call_bits] - sensitivity[name][floor_bits]
        if extra > 0 and saved > 0:
            gains.append((-saved / extra, name, extra))
    floors: dict[str, int] = {}
    spent = base
    for _, name, extra in sorted(gains):
        if spent + extra <= budget:
            floors[name] = floor_bits
            spent += extra
    return _plan(floors, sizes, sensitivity)


def _plan(floors: dict[str, int], sizes, sensitivity) -> FloorPlan:
    total_weights = sum(r * sefp.padded_in_features(k) for r, k in sizes.values())
    bytes_per_token, kl = {}, {}
    for bits in SUPPORTED_BITS:
        eff = {name: max(bits, floors.get(name, 0)) for name in sizes}
        bytes_per_token[bits] = sum(unit_bytes_read(r, k, eff[name]) for name, (r, k) in sizes.items())
        kl[bits] = sum(sensitivity[name][eff[name]] for name in sizes) if sensitivity else float("nan")
    bits_per_weight = {b: 8 * v / total_weights for b, v in bytes_per_token.items()}
    return FloorPlan(dict(floors), bits_per_weight, bytes_per_token, kl)


def layer_sensitivities(
    model: nn.Module,
    units: list[ExportUnit] | None = None,
    input_stats: dict | None = None,
    *,
    tokenizer=None,
    samples=None,
    rule: str = DEFAULT_RULE,
    exponent_rule: str = DEFAULT_EXPONENT_RULE,
    progress: bool = False,
    encoder=None,
) -> tuple[dict[str, tuple[int, int]], dict[str, dict[int, float]]]:
    """(packed sizes, Fisher-predicted KL per precision) of each exported layer under ``rule`` / ``exponent_rule``.

    ``units``: default every exported layer (lm_head included); ``samples``: calibration samples,
    generated from ``tokenizer`` when not given; ``input_stats``: by HF member name, collected when
    the rules need them and none are given. ``encoder(unit name, w, importance) -> (q, levels)``
    replaces :func:`quantize_layer` (the exporter passes a memo so each layer is encoded once).
    """
    from otaro_export.calibration import FISHER_SAMPLES, calibration_samples, collect_input_stats, fisher_diagonal

    units = export_units(model) if units is None else list(units)
    if samples is None:
        if tokenizer is None:
            raise ValueError("layer sensitivity needs calibration text: pass samples or the model's tokenizer")
        samples = calibration_samples(model, tokenizer, progress=progress)
    members = [m for u in units for m in u.members]
    if input_stats is None and (rule == "fitted" or exponent_rule == "search"):
        input_stats = collect_input_stats(model, samples, [u.members[0] for u in units], progress=progress)
    fisher = fisher_diagonal(model, list(samples)[:FISHER_SAMPLES], members)
    sizes, sensitivity = {}, {}
    iterator = units
    if progress:
        from tqdm import tqdm

        iterator = tqdm(units, desc="layer sensitivity", unit="layer")
    for unit in iterator:
        w = unit_weight(model, unit)
        importance = None if input_stats is None else input_stats[unit.members[0]].importance()
        if encoder is None:
            q, levels = quantize_layer(w, rule, exponent_rule, importance, unit.name)
        else:
            q, levels = encoder(unit.name, w, importance)
        sizes[unit.name] = tuple(w.shape)
        sensitivity[unit.name] = predicted_kl(w, q, levels, torch.cat([fisher[m] for m in unit.members]))
    return sizes, sensitivity


def floor_plan(
    model: nn.Module,
    units: list[ExportUnit] | None = None,
    input_stats: dict | None = None,
    *,
    tokenizer=None,
    samples=None,
    rule: str = DEFAULT_RULE,
    exponent_rule: str = DEFAULT_EXPONENT_RULE,
    budget_bits: float = DEFAULT_FLOOR_BUDGET_BITS,
    progress: bool = False,
    encoder=None,
) -> FloorPlan:
    """Per-layer floors for ``model`` under the export's rules, with the bytes and predicted KL they give.

    Sensitivity is measured, not guessed: the diagonal Fisher information of every weight on the
    built-in calibration text (``calibration.fisher_diagonal``) times the layer's squared weight
    error at each precision predicts the KL each layer adds; :func:`plan_floors` then spends the
    byte budget where it saves the most KL. ``budget_bits`` is the average weight bits per weight
    E5M3 may read over ``units`` (4.125 without floors; 4.125 or less gives no floors).
    """
    sizes, sensitivity = layer_sensitivities(
        model,
        units,
        input_stats,
        tokenizer=tokenizer,
        samples=samples,
        rule=rule,
        exponent_rule=exponent_rule,
        progress=progress,
        encoder=encoder,
    )
    return plan_floors(sizes, sensitivity, budget_bits)


def recommend_floors(
    model: nn.Module,
    units: list[ExportUnit] | None = None,
    input_stats: dict | None = None,
    **kwargs,
) -> dict[str, int]:
    """``{exported layer: min_bits}`` for the layers :func:`floor_plan` raises (keyword arguments as there)."""
    return floor_plan(model, units, input_stats, **kwargs).floors
