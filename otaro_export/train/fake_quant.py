"""SEFP fake quantization for tuning: float master weights, quantized forward, STE backward.

The forward pass of every selected linear uses ``sefp.fake_quantize(W, k)``
(the exact E5Mk quant-dequant of the format module), the backward pass
treats the quantizer as the identity (straight-through estimator,
``dQ(W, k)/dW = 1``), so gradients reach the float master weights
unchanged. The precision ``k`` is one attribute shared by all layers and
changes from step to step (BPS picks it).

Beyond the paper, a layer can train through another reconstruction rule and
exponent rule (docs/FORMAT.md §1, §3; ``otaro tune --reconstruction``): its
encoding (per-group exponents and the ``levels`` table, from
``reconstruction.quantize_layer``) is computed from the float weights when
attached and again on :func:`refresh_encodings`; between refreshes the forward
pass re-truncates the current weights with those exponents and levels, which is
exactly what export computes from the same weights.

With ``quantize_lm_head`` and an lm_head tied to the input embedding, the
embedding gathers rows of the same fake-quantized weight
(:class:`FakeQuantEmbedding`), as the exported tied SEFP embedding reads the
lm_head's planes (docs/FORMAT.md §5).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from otaro_export import activation_quant
from otaro_export.convert import select_sefp_linears
from otaro_export.sefp import RECONSTRUCTION_RULES, check_bits, check_exponent_rule, fake_quantize


class _SEFPStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int, levels=None, exponents=None) -> torch.Tensor:
        if levels is None and exponents is None:
            return fake_quantize(weight, bits)
        return fake_quantize(weight, bits, levels=levels, exponents=exponents)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # STE: the truncating quantizer is treated as the identity.
        return grad_output, None, None, None


def ste_fake_quantize(
    weight: torch.Tensor, bits: int, levels: torch.Tensor | None = None, exponents: torch.Tensor | None = None
) -> torch.Tensor:
    """``fake_quantize(weight, bits[, levels, exponents])`` forward, identity gradient backward."""
    return _SEFPStraightThrough.apply(weight, check_bits(bits), levels, exponents)


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses its weight fake-quantized to E5M``bits``.

    It shares the ``weight``/``bias`` Parameters of the linear it was built
    from (the float master weights), so parameter names, state-dict keys and
    optimizer bindings do not change. ``bits = None`` runs in full precision.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.bits: int | None = None
        self.min_bits: int | None = None  # a precision floor (docs/FORMAT.md §6): runs at max(bits, min_bits)
        self.reconstruction = "floor"
        self.exponent_rule = "floor"
        self.importance: torch.Tensor | None = None
        self.levels: torch.Tensor | None = None
        self.exponents: torch.Tensor | None = None
        self.act_int8_max_bits = 0  # int8 activations at bits <= this (docs/FORMAT.md §9); 0: never

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FakeQuantLinear:
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features = linear.in_features
        module.out_features = linear.out_features
        module.weight = linear.weight
        module.bias = linear.bias
        module.bits = None
        module.min_bits = None
        module.reconstruction = "floor"
        module.exponent_rule = "floor"
        module.importance = None
        module.levels = None
        module.exponents = None
        module.act_int8_max_bits = 0
        return module

    def set_rule(
        self, reconstruction: str = "floor", exponent_rule: str = "floor", importance: torch.Tensor | None = None
    ) -> None:
        """Train through ``reconstruction`` / ``exponent_rule`` (``importance``: E[x^2] of the input, or None).

        The encoding is computed by :func:`refresh_encodings` (per packed layer, as export does).
        """
        if reconstruction not in RECONSTRUCTION_RULES:
            raise ValueError(
                f"unknown reconstruction rule {reconstruction!r}: choose one of {', '.join(RECONSTRUCTION_RULES)}"
            )
        self.reconstruction = reconstruction
        self.exponent_rule = check_exponent_rule(exponent_rule)
        self.importance = None if importance is None else importance.detach().to(torch.float32).cpu()
        self.levels = self.exponents = None

    @property
    def paper_rules(self) -> bool:
        return self.reconstruction == "floor" and self.exponent_rule == "floor"

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features = self.in_features
        linear.out_features = self.out_features
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    @property
    def effective_bits(self) -> int | None:
        """The precision this layer runs at: max(bits, min_bits), or None (full precision)."""
        if self.bits is None:
            return None
        return self.bits if self.min_bits is None else max(self.bits, self.min_bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.effective_bits
        weight = self.weight if bits is None else ste_fake_quantize(self.weight, bits, self.levels, self.exponents)
        if bits is not None and activation_quant.applies(bits, self.act_int8_max_bits):
            with torch.no_grad():  # straight-through: the forward sees fq(x), the gradient flows to x unchanged
                delta = activation_quant.fake_quantize(x.detach().to(torch.float32)).to(x.dtype) - x.detach()
            x = x + delta
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        precision = "FP" if self.bits is None else f"E5M{self.bits}"
        rule = "" if self.reconstruction == "floor" else f", reconstruction={self.reconstruction}"
        rule += "" if self.exponent_rule == "floor" else f", exponents={self.exponent_rule}"
        return f"{super().extra_repr()}, precision={precision}{rule}"


class FakeQuantEmbedding(nn.Embedding):
    """The input embedding tied to a fake-quant lm_head: looks up rows of the same quantized weight.

    The export stores a tied embedding / lm_head once in SEFP and the embedding op reads the
    lm_head's planes at the lm_head's precision, floor, table and exponents (docs/FORMAT.md §5, §6),
    so this module follows ``head`` in all of them. It shares the weight Parameter (state-dict keys
    do not change). Only the rows looked up are quantized: groups run along a row, so a row's
    values do not depend on the others.
    """

    @classmethod
    def tied_to(cls, embedding: nn.Embedding, head: FakeQuantLinear) -> FakeQuantEmbedding:
        if embedding.weight is not head.weight:
            raise ValueError("the embedding is not tied to this lm_head")
        if embedding.max_norm is not None:
            raise ValueError("an embedding with max_norm cannot be fake-quantized (it renormalises rows)")
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type"):
            setattr(module, attr, getattr(embedding, attr))
        module.scale_grad_by_freq, module.sparse = embedding.scale_grad_by_freq, embedding.sparse
        module.weight = embedding.weight
        module.follow(head)
        return module

    def follow(self, head: FakeQuantLinear) -> None:
        # a plain attribute (a tuple), not a submodule: the head is registered once, as lm_head
        self._head = (head,)

    @property
    def head(self) -> FakeQuantLinear:
        return self._head[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head
        bits = head.effective_bits
        if bits is None:
            return super().forward(ids)
        rows, inverse = torch.unique(ids.reshape(-1), return_inverse=True)
        exponents = None if head.exponents is None else head.exponents[rows.to(head.exponents.device)]
        table = ste_fake_quantize(self.weight[rows], bits, head.levels, exponents)
        return F.embedding(inverse.reshape(ids.shape), table)

    def to_embedding(self) -> nn.Embedding:
        embedding = nn.Embedding.__new__(nn.Embedding)
        nn.Module.__init__(embedding)
        for attr in ("num_embeddings", "embedding_dim", "padding_idx", "max_norm", "norm_type"):
            setattr(embedding, attr, getattr(self, attr))
        embedding.scale_grad_by_freq, embedding.sparse = self.scale_grad_by_freq, self.sparse
        embedding.weight = self.weight
        return embedding

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tied to the fake-quant lm_head"


def _tie_embedding(model: nn.Module) -> None:
    """Make a tied input embedding follow the fake-quant lm_head (no-op when untied or lm_head is float)."""
    head = getattr(model, "lm_head", None)
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if not isinstance(head, FakeQuantLinear) or not isinstance(embedding, nn.Embedding):
        return
    if embedding.weight is not head.weight:
        return
    if isinstance(embedding, FakeQuantEmbedding):
        embedding.follow(head)
    else:
        model.set_input_embeddings(FakeQuantEmbedding.tied_to(embedding, head))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attach_fake_quant(
    model: nn.Module,
    quantize_lm_head: bool = False,
    reconstruction: str = "floor",
    exponent_rule: str = "floor",
    input_stats: dict | None = None,
    int8_activations: int = 0,
) -> list[str]:
    """Swap the SEFP-selected linears of ``model`` for :class:`FakeQuantLinear`, in place.

    The layers are the ones ``convert.select_sefp_linears`` picks, so tuning
    quantizes exactly what export will. Returns their names. Idempotent.
    ``reconstruction`` / ``exponent_rule``: the rules each layer trains through
    (default: the paper's); ``input_stats`` (``calibration.collect_input_stats``,
    by layer name) weights the ``fitted`` levels and the exponent ``search``.
    Linears that export packs together (q/k/v, gate/up) share one table, as at export. A fake-quant
    lm_head tied to the input embedding quantizes the embedding's lookups too (:class:`FakeQuantEmbedding`).
    Attaching again changes the rules but keeps the layers' precision floors (:func:`set_floors`).
    ``int8_activations``: run E5M3..E5M``int8_activations`` with int8 activations, and their levels on
    the int8 grid, as an export with ``--int8-activations`` does (docs/FORMAT.md §9; 0: off).
    """
    activation_quant.check_max_bits(int8_activations)
    names = select_sefp_linears(model, quantize_lm_head)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, FakeQuantLinear):
            module = FakeQuantLinear.from_linear(module)
            _replace(model, name, module)
        stats = None if input_stats is None else input_stats.get(name)
        module.set_rule(reconstruction, exponent_rule, None if stats is None else stats.importance())
        module.act_int8_max_bits = int8_activations
    _tie_embedding(model)
    refresh_encodings(model)
    return names


def attach_with_rules(
    model: nn.Module,
    quantize_lm_head: bool = False,
    reconstruction: str = "floor",
    exponent_rule: str = "floor",
    samples=None,
    int8_activations: int = 0,
) -> list[str]:
    """:func:`attach_fake_quant` with the input statistics the rules need, collected on ``samples``.

    Call it on the float model (before tuning changes it): ``fitted`` and ``search`` weight
    errors by E[x^2] of each layer's input over (up to 16 of) ``samples``, as export does on its
    calibration text. The paper's rules need no statistics and ignore ``samples``.
    ``int8_activations``: as in :func:`attach_fake_quant`.
    """
    stats = None
    if (reconstruction == "fitted" or exponent_rule == "search") and samples:
        from otaro_export.calibration import CALIBRATION_SAMPLES, collect_input_stats

        names = select_sefp_linears(model, quantize_lm_head)
        stats = collect_input_stats(model, list(samples)[:CALIBRATION_SAMPLES], names)
    return attach_fake_quant(model, quantize_lm_head, reconstruction, exponent_rule, stats, int8_activations)


def _full(weight: torch.Tensor) -> torch.Tensor:
    """The whole weight on the CPU (a sharded DTensor is gathered first)."""
    full = getattr(weight, "full_tensor", None)
    return (full() if callable(full) else weight).detach().cpu().to(torch.float32)


@torch.no_grad()
def refresh_encodings(model: nn.Module) -> None:
    """Recompute the fake-quant layers' exponents and levels from their current float weights.

    Layers that export packs into one linear (q/k/v, gate/up) share one table fitted on their
    concatenated weights, exactly as ``reconstruction.quantize_layer`` is called at export.
    A no-op for layers on the paper's rules.
    """
    from otaro_export.reconstruction import export_units, quantize_layer

    layers = {name: m for name, m in fake_quant_layers(model).items() if not m.paper_rules}
    if not layers:
        return
    try:
        units = export_units(model)
    except ValueError:
        units = []
    groups = [u.members for u in units if all(m in layers for m in u.members)]
    covered = {m for members in groups for m in members}
    groups += [(name,) for name in layers if name not in covered]
    for members in groups:
        first = layers[members[0]]
        w = torch.cat([_full(layers[m].weight) for m in members])
        q, levels = quantize_layer(
            w,
            first.reconstruction,
            first.exponent_rule,
            first.importance,
            name=members[0],
            int8_max_bits=first.act_int8_max_bits,  # as export stores them
        )
        rows = 0
        for m in members:
            layer = layers[m]
            n = layer.out_features
            device = layer.weight.device
            layer.levels = None if levels is None else levels.to(device)
            exps = q.exponents[rows : rows + n]
            layer.exponents = None if first.exponent_rule == "floor" else exps.to(device)
            rows += n


def detach_fake_quant(model: nn.Module) -> None:
    """Put plain ``nn.Linear`` (and ``nn.Embedding``) modules (same Parameters) back, in place."""
    get = getattr(model, "get_input_embeddings", None)
    embedding = get() if callable(get) else None
    if isinstance(embedding, FakeQuantEmbedding):
        model.set_input_embeddings(embedding.to_embedding())
    for name, module in list(fake_quant_layers(model).items()):
        _replace(model, name, module.to_linear())


def fake_quant_layers(model: nn.Module) -> dict[str, FakeQuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)}


def set_precision(model: nn.Module, bits: int | None) -> None:
    """Run every fake-quant layer at E5M``bits`` (``None``: full precision)."""
    if bits is not None:
        bits = check_bits(bits)
    layers = fake_quant_layers(model)
    if not layers:
        raise ValueError("model has no fake-quant layers: call attach_fake_quant(model) first")
    for layer in layers.values():
        layer.bits = bits


def set_floors(model: nn.Module, floors: dict[str, int]) -> None:
    """Give fake-quant layers precision floors (docs/FORMAT.md §6), by HF layer or exported (packed) layer name.

    A floor on a packed layer (``...qkv_proj``, ``...gate_up_proj``) applies to all its members.
    Layers not named lose any floor they had.
    """
    from otaro_export.reconstruction import export_units

    layers = fake_quant_layers(model)
    try:
        members = {u.name: u.members for u in export_units(model)}
    except ValueError:
        members = {}
    for layer in layers.values():
        layer.min_bits = None
    for name, bits in floors.items():
        targets = members.get(name, (name,))
        unknown = [t for t in targets if t not in layers]
        if unknown:
            raise ValueError(f"no fake-quant layer {unknown[0]!r} for the floor on {name!r}")
        for target in targets:
            layers[target].min_bits = check_bits(bits)
