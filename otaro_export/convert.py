"""Pick the SEFP layers of a HF causal LM (listed in the manifest, docs/FORMAT.md §7) and convert them.

Default: every ``nn.Linear`` inside the decoder blocks (``model.layers.*``);
embeddings and ``lm_head`` stay float unless ``quantize_lm_head=True``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from otaro_export.errors import UnsupportedModelError
from otaro_export.sefp import BITS_PER_WEIGHT_AT_REST, check_bits
from otaro_export.sefp_linear import SEFPLinear

#: HF ``config.model_type`` values whose decoder blocks we know how to convert and export.
SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "mistral")


@dataclass
class ConvertedLayer:
    name: str
    out_features: int
    in_features: int


@dataclass
class ConversionReport:
    layers: list[ConvertedLayer] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    @property
    def num_weights(self) -> int:
        return sum(layer.out_features * layer.in_features for layer in self.layers)

    @property
    def bytes_at_rest(self) -> float:
        return self.num_weights * BITS_PER_WEIGHT_AT_REST / 8

    def summary(self) -> str:
        return (
            f"converted {len(self.layers)} linear layers to SEFP "
            f"({self.num_weights / 1e6:.1f}M weights, {self.bytes_at_rest / 2**20:.1f} MiB at rest)"
        )


def check_supported(model: nn.Module) -> str:
    """Return the model type, or raise naming the supported families."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        got = model_type if model_type is not None else type(model).__name__
        raise UnsupportedModelError(
            f"unsupported model architecture {got!r}: otaro-export supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (HF config.model_type)"
        )
    if decoder_layers(model) is None:
        raise UnsupportedModelError(
            f"model of type {model_type!r} has no decoder blocks at model.model.layers; pass a *ForCausalLM model"
        )
    return model_type


def decoder_layers(model: nn.Module) -> nn.ModuleList | None:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def select_sefp_linears(model: nn.Module, quantize_lm_head: bool = False) -> list[str]:
    """Fully-qualified names of the nn.Linear modules that become SEFP."""
    check_supported(model)
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.startswith("model.layers.")
    ]
    if quantize_lm_head and isinstance(getattr(model, "lm_head", None), nn.Linear):
        names.append("lm_head")
    return names


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def convert_model(
    model: nn.Module, *, quantize_lm_head: bool = False, bits: int = 8, progress: bool = False
) -> ConversionReport:
    """Replace the selected nn.Linear layers with :class:`SEFPLinear`, in place.

    Errors on NaN/Inf weights name the offending layer. If ``lm_head`` is tied
    to the embeddings, quantizing it makes the embedding gather rows of the
    same SEFP planes (one copy, as in the exported graphs).
    """
    names = select_sefp_linears(model, quantize_lm_head)
    report = ConversionReport()
    iterator = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="SEFP quantize", unit="layer")
    with torch.no_grad():
        for name in iterator:
            linear = model.get_submodule(name)
            tied = name == "lm_head" and _is_tied(model)
            sefp = SEFPLinear.from_linear(linear, name=f"{name}.weight", bits=bits)
            _replace(model, name, sefp)
            if tied:
                from otaro_export.sefp_embedding import SEFPEmbedding

                model.model.embed_tokens = SEFPEmbedding(sefp)
            report.layers.append(ConvertedLayer(name, linear.out_features, linear.in_features))
    return report


def _is_tied(model: nn.Module) -> bool:
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    head = getattr(model, "lm_head", None)
    return isinstance(embed, nn.Embedding) and isinstance(head, nn.Linear) and embed.weight is head.weight


def sefp_layers(model: nn.Module) -> dict[str, SEFPLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SEFPLinear)}


def set_bits(model: nn.Module, bits: int) -> None:
    """Set the precision of every SEFP layer of ``model``."""
    bits = check_bits(bits)
    for layer in sefp_layers(model).values():
        layer.set_bits(bits)


def dequantized_copy(model: nn.Module, bits: int) -> nn.Module:
    """A float copy of a converted model with each SEFP layer's weight at E5M``bits``.

    This is the torch reference that every runtime is compared against: plain
    nn.Linear layers, so it runs at eager float speed.
    """
    from otaro_export.sefp_embedding import SEFPEmbedding

    bits = check_bits(bits)
    ref = copy.deepcopy(model)
    for name, module in list(ref.named_modules()):
        if isinstance(module, SEFPEmbedding):
            _replace(ref, name, nn.Embedding.from_pretrained(module.dequantized_weight(bits)))
    for name, layer in sefp_layers(ref).items():
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(layer.dequantized_weight(bits))
            if layer.bias is not None:
                linear.bias.copy_(layer.bias)
        _replace(ref, name, linear)
    return ref
