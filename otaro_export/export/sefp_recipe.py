"""How each exported linear becomes SEFP: encoder, reconstruction table and precision floor.

Both exporters ask this module for one :class:`~otaro_export.passes.SEFPLayerSpec`
per packed linear of :class:`~otaro_export.export.llm_decoder.ExportDecoder`
(``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``, ``lm_head``). The rule
and exponent choice come from :mod:`otaro_export.reconstruction`; the ``fitted``
rule and automatic floors weight errors by each layer's input statistics over
built-in calibration text (:mod:`otaro_export.calibration`), collected once on
the float HF model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from torch import nn

from otaro_export.errors import OtaroError
from otaro_export.passes import SEFPLayerSpec
from otaro_export.reconstruction import FLOOR_POLICIES
from otaro_export.sefp import SUPPORTED_BITS, check_bits

LM_HEAD_MODES = ("sefp", "float")
#: measured defaults (docs/QUALITY.md, docs/BENCHMARKS.md)
DEFAULT_LM_HEAD_MIN_BITS = 3
DEFAULT_LAYER_FLOORS = "auto"
#: int8 activations (docs/FORMAT.md §9) up to this precision, per target, unless told otherwise: E5M3..E5M5.
#: E5M5 is included because the default floors make 41 layers E5M5 calls in an E5M3 decode, and the E5M5
#: integer kernel (AVX-512 VBMI) runs them ~1.3-1.8x faster than the float path; measured cost and speed in
#: docs/BENCHMARKS.md. Both targets run them in both kernel modes (ONNX: the node attribute; ExecuTorch: the
#: op argument, decomposed in portable mode).
DEFAULT_INT8_ACTIVATIONS = {"onnx": 5, "executorch": 5}


@dataclass
class SEFPRecipe:
    """The export's quantization choices (CLI: --reconstruction, --exponents, --lm-head, ...)."""

    reconstruction: str = "floor"
    exponent_rule: str = "floor"
    lm_head: str = "sefp"
    lm_head_min_bits: int = SUPPORTED_BITS[0]
    layer_floors: str = "none"
    #: int8 activations at bits <= this (0: never; docs/FORMAT.md §9); None: the target's default
    int8_activations: int | None = 0
    #: per-layer floors given as they are (exported layer name -> min_bits), e.g. the plan a model was tuned
    #: with (:meth:`with_tuned_run`); None: ``layer_floors`` decides
    floors: dict[str, int] | None = None
    #: the settings the user chose (:func:`default_recipe`'s non-None overrides): a tuned run's record
    #: does not replace them
    explicit: frozenset = field(default_factory=frozenset, compare=False)

    def validate(self) -> None:
        from otaro_export import reconstruction, sefp

        try:
            reconstruction.check_rule(self.reconstruction)
            sefp.check_exponent_rule(self.exponent_rule)
        except ValueError as exc:
            raise OtaroError(str(exc)) from exc
        if self.lm_head not in LM_HEAD_MODES:
            raise OtaroError(f"unknown --lm-head {self.lm_head!r}; choose one of {', '.join(LM_HEAD_MODES)}")
        if self.layer_floors not in FLOOR_POLICIES:
            raise OtaroError(f"unknown --layer-floors {self.layer_floors!r}; choose one of {', '.join(FLOOR_POLICIES)}")
        try:
            self.lm_head_min_bits = check_bits(self.lm_head_min_bits)
        except ValueError as exc:
            raise OtaroError(f"--lm-head-min-bits: {exc}") from exc
        if self.int8_activations is not None:
            from otaro_export.activation_quant import check_max_bits

            try:
                check_max_bits(self.int8_activations)
            except ValueError as exc:
                raise OtaroError(f"--int8-activations: {exc}") from exc
        if self.floors is not None:
            try:
                self.floors = {str(name): check_bits(bits) for name, bits in self.floors.items()}
            except (ValueError, AttributeError) as exc:
                raise OtaroError(f"precision floors: {exc}") from exc

    def for_target(self, target: str) -> SEFPRecipe:
        """A copy with ``int8_activations`` resolved for ``target`` (None: the target's default)."""
        value = self.int8_activations
        if value is None:
            value = DEFAULT_INT8_ACTIVATIONS.get(target, 0)
        return replace(self, int8_activations=value)

    def with_tuned_run(self, meta: dict, log: Callable[[str], None] = print) -> tuple[SEFPRecipe, list]:
        """This recipe with the rule an ``otaro tune`` run trained through: reconstruction and exponent rules,
        floors, int8 activations and whether the tied lm_head was quantized (``--lm-head sefp`` / ``float``).

        ``meta``: the checkpoint's ``meta.json``. Only settings the user did not choose (``explicit``)
        and the run recorded are taken. Returns ``(recipe, names of the settings taken)``. Both targets run a
        run's int8 activations as it was tuned, so the target does not matter here.
        """
        from otaro_export import reconstruction, sefp
        from otaro_export.reconstruction import FloorPlan

        config = meta.get("config") or {}
        changes, taken = {}, []
        # runs saved before tune recorded its rules have neither key: they keep the export's defaults
        for key, check, label in (
            ("reconstruction", reconstruction.check_rule, "reconstruction"),
            ("exponent_rule", sefp.check_exponent_rule, "exponents"),
        ):
            if key not in self.explicit and key in config:
                try:
                    changes[key] = check(config[key])
                except ValueError as exc:
                    raise OtaroError(f"the tuned checkpoint's {key} is unusable: {exc}") from exc
                taken.append(key)
                log(f"{label}: {changes[key]}, as the run was tuned")
        if "layer_floors" not in self.explicit and "layer_floors" in config:
            if config["layer_floors"] == "none":
                changes.update(layer_floors="none", floors=None)
            else:
                try:
                    plan = FloorPlan.from_dict(meta.get("floor_plan") or {})
                except ValueError as exc:
                    raise OtaroError(f"the tuned checkpoint's floor plan is unreadable: {exc}") from exc
                changes.update(layer_floors=config["layer_floors"], floors=plan.floors)
            taken.append("layer_floors")
            floors = changes["floors"] or {}
            log(f"precision floors: as the run was tuned ({_floor_summary(floors)})")
        if "int8_activations" not in self.explicit and "int8_activations" in config:
            value = int(config["int8_activations"])
            changes["int8_activations"] = value
            taken.append("int8_activations")
            log(f"int8 activations: as the run was tuned ({f'up to E5M{value}' if value else 'off'})")
        # tune --no-quantize-lm-head trains (and eval measures) a float tied embedding + lm_head: --lm-head float
        if "lm_head" not in self.explicit and "quantize_lm_head" in config:
            quantized = config["quantize_lm_head"]
            if not isinstance(quantized, bool):
                raise OtaroError(
                    f"the tuned checkpoint's quantize_lm_head is unusable: {quantized!r} is not true/false"
                )
            changes["lm_head"] = "sefp" if quantized else "float"
            taken.append("lm_head")
            log(f"lm_head: {changes['lm_head']}, as the run was tuned")
        return replace(self, **changes), taken

    @property
    def needs_statistics(self) -> bool:
        plans = self.layer_floors == "auto" and self.floors is None
        return self.reconstruction == "fitted" or self.exponent_rule != "floor" or plans

    def manifest_fields(self) -> dict:
        return {
            "reconstruction": self.reconstruction,
            "exponent_rule": self.exponent_rule,
            "lm_head": self.lm_head,
            "int8_activations": self.int8_activations or 0,
        }


def default_recipe(**overrides) -> SEFPRecipe:
    """The export defaults (``None`` values keep them): the best measured choices, docs/QUALITY.md."""
    from otaro_export import reconstruction

    recipe = SEFPRecipe(
        reconstruction=reconstruction.DEFAULT_RULE,
        exponent_rule=reconstruction.DEFAULT_EXPONENT_RULE,
        lm_head="sefp",
        lm_head_min_bits=DEFAULT_LM_HEAD_MIN_BITS,
        layer_floors=DEFAULT_LAYER_FLOORS,
        int8_activations=None,  # the target's default
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(recipe, key, value)
    recipe.explicit = frozenset(key for key, value in overrides.items() if value is not None)
    return recipe


def encode_layer(recipe: SEFPRecipe, unit: str, weight, importance):
    """One exported layer encoded with ``recipe``: ``(SEFPWeight, levels)``, levels as export stores them."""
    from otaro_export.reconstruction import quantize_layer

    return quantize_layer(
        weight,
        recipe.reconstruction,
        recipe.exponent_rule,
        importance,
        name=f"{unit}.weight",
        int8_max_bits=recipe.int8_activations or 0,
    )


def plan_layer_floors(
    hf_model: nn.Module,
    tokenizer,
    units,
    recipe: SEFPRecipe,
    *,
    stats: dict | None = None,
    samples=None,
    encoder: Callable | None = None,
    progress: bool = False,
):
    """The export's automatic floor plan (``--layer-floors auto``) of ``hf_model``'s current float weights.

    ``units``: the exported layers (``reconstruction.ExportUnit``) to plan over. Sensitivity and input
    statistics come from the built-in calibration text (``samples``, ``stats``: already collected
    ones), each layer encoded as the export encodes it (``encoder``: default :func:`encode_layer`).
    ``otaro tune --layer-floors auto`` calls it on the untuned model, so a tuned run trains with the
    floors an export of the untuned model picks. Returns a ``reconstruction.FloorPlan``.
    """
    from otaro_export import reconstruction

    if tokenizer is None and samples is None:
        raise OtaroError("--layer-floors auto needs the model's tokenizer for calibration text")
    samples = calibration_text_samples(tokenizer) if samples is None else samples
    if encoder is None:

        def encoder(unit, weight, importance):
            return encode_layer(recipe, unit, weight, importance)

    return reconstruction.floor_plan(
        hf_model,
        list(units),
        stats,
        samples=samples,
        rule=recipe.reconstruction,
        exponent_rule=recipe.exponent_rule,
        encoder=encoder,
        progress=progress,
    )


class _EncodingMemo:
    """Each exported layer encoded once: the floor plan and the lowering both ask for it."""

    def __init__(self, recipe: SEFPRecipe):
        self.recipe = recipe
        self.done: dict[str, tuple] = {}

    def __call__(self, unit: str, weight, importance):
        hit = self.done.get(unit)
        if hit is None or tuple(weight.shape) != (hit[0].out_features, hit[0].in_features):
            hit = encode_layer(self.recipe, unit, weight, importance)
            self.done[unit] = hit
        return hit

    def encoder(self, unit: str, importance) -> Callable:
        def encode(weight, _name):
            return self.pop(unit, weight, importance)

        return encode

    def pop(self, unit: str, weight, importance):
        result = self(unit, weight, importance)
        del self.done[unit]  # the lowering packs it; the memo need not hold every layer until the end
        return result


def layer_specs(
    hf_model: nn.Module,
    tokenizer,
    names: list[str],
    recipe: SEFPRecipe,
    log: Callable[[str], None] = print,
) -> dict[str, SEFPLayerSpec]:
    """One spec per exported linear in ``names`` (ExportDecoder names: packed layers and ``lm_head``)."""
    from otaro_export import reconstruction

    recipe.validate()
    units = {u.name: u for u in reconstruction.export_units(hf_model, include_lm_head="lm_head" in names)}
    missing = [n for n in names if n not in units]
    if missing:
        raise OtaroError(f"no source layers for exported linears {missing[:3]}")
    stats = None
    if recipe.needs_statistics:
        if tokenizer is None:
            raise OtaroError(
                f"--reconstruction {recipe.reconstruction} / --exponents {recipe.exponent_rule} / --layer-floors "
                f"{recipe.layer_floors} need the model's tokenizer for calibration text; pass a model with one, "
                "or use --reconstruction floor --exponents floor --layer-floors none"
            )
        from otaro_export.calibration import collect_input_stats

        inputs = sorted({units[n].members[0] for n in names})
        samples = calibration_text_samples(tokenizer)
        stats = collect_input_stats(hf_model, samples, inputs)
        tokens = sum(len(s.ids) for s in samples)
        log(f"calibration: input statistics of {len(inputs)} layers over {tokens} tokens of built-in text")
    memo = _EncodingMemo(recipe)
    floors = {}
    if recipe.floors is not None:
        known = {u.name for u in reconstruction.export_units(hf_model)}
        unknown = sorted(set(recipe.floors) - known)
        if unknown:
            raise OtaroError(f"precision floors name layers this model does not have: {unknown[:3]}")
        floors = {n: b for n, b in recipe.floors.items() if n in names}  # e.g. a floored lm_head kept float
    elif recipe.layer_floors == "auto":
        units_planned = [units[n] for n in names]
        floors = plan_layer_floors(
            hf_model, tokenizer, units_planned, recipe, stats=stats, samples=samples, encoder=memo, progress=True
        ).floors
        log(f"precision floors: {_floor_summary(floors)}")
    specs = {}
    for name in names:
        importance = stats[units[name].members[0]].importance() if stats is not None else None
        floor = floors.get(name, SUPPORTED_BITS[0])
        if name == "lm_head":
            floor = max(floor, recipe.lm_head_min_bits)
        specs[name] = SEFPLayerSpec(encode=memo.encoder(name, importance), min_bits=floor)
    return specs


def lower_exported_decoder(ep, hf_model, tokenizer, names: list[str], recipe: SEFPRecipe, log=print):
    """The lowering both exporters run on their ``torch.export`` program: the SEFP layers ``names`` (none:
    a float baseline) with the recipe's per-layer specs and one ``bits`` input, then the inputs left unused
    dropped (e.g. the second name of a tied embedding). Returns ``(program, LoweringReport or None)``."""
    from otaro_export.passes.drop_unused_inputs import drop_unused_inputs
    from otaro_export.passes.lowering import lower_to_sefp

    report = None
    if names:
        specs = layer_specs(hf_model, tokenizer, names, recipe, log)
        ep, report = lower_to_sefp(ep, specs, bits_input="bits", progress=True)
        log(report.summary())
    ep, _ = drop_unused_inputs(ep)
    return ep, report


#: built-in calibration text: chat-formatted requests with answers in the register a small assistant uses
_CALIBRATION_ANSWERS = (
    "The sky looks blue because air molecules scatter short blue wavelengths of sunlight far more than long red "
    "ones, so blue light reaches our eyes from every direction. At sunset the light crosses more air, the blue is "
    "scattered away, and the reds and oranges remain.",
    "Here are three tips: 1. Work in short blocks of 25 minutes and take a five-minute break. 2. Put your phone in "
    "another room. 3. Write down one clear goal before you start, and check it off when you finish.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n\n"
    "This function returns the n-th Fibonacci number in O(n) time and constant memory.",
    "Paris is the capital of France. It is famous for the Eiffel Tower, the Louvre museum, its cafes, fashion and "
    "cuisine, and for the river Seine that runs through the city center.",
    "Sentiment: positive. The reviewer praises the battery life and the screen, and mentions no problem.",
    "To boil an egg, place it in a pot of cold water, bring the water to a boil, then simmer for 7 minutes for a "
    "jammy yolk or 10 minutes for a firm one. Cool it in cold water before peeling.",
)


def calibration_text_samples(tokenizer):
    """Teacher-forced calibration data: one forward pass, no generation (input statistics need no sampling)."""
    from otaro_export.train.tune_data import TRAIN_PROMPTS, Sample

    samples = []
    for prompt, answer in zip(TRAIN_PROMPTS, _CALIBRATION_ANSWERS):
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}], tokenize=False
            )
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(f"{prompt}\n{answer}")["input_ids"]
        samples.append(Sample(tuple(int(i) for i in ids), 1))
    return samples


def _floor_summary(floors: dict[str, int]) -> str:
    raised = {k: v for k, v in floors.items() if v > SUPPORTED_BITS[0]}
    if not raised:
        return "none"
    return ", ".join(f"{name} >= E5M{bits}" for name, bits in sorted(raised.items()))
