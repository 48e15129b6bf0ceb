"""SEFP fake quantization for tuning: float master weights, quantized forward, STE backward.

The forward pass of every selected linear uses ``sefp.fake_quantize(W, k)``
(the exact E5Mk quant-dequant of the format module), the backward pass
treats the quantizer as the identity (straight-through estimator,
``dQ(W, k)/dW = 1``), so gradients reach the float master weights
unchanged. The precision ``k`` is one attribute shared by all layers and
changes from step to step (BPS picks it).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from otaro_export.convert import select_sefp_linears
from otaro_export.sefp import check_bits, fake_quantize


class _SEFPStraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int) -> torch.Tensor:
        return fake_quantize(weight, bits)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        # STE: the truncating quantizer is treated as the identity.
        return grad_output, None


def ste_fake_quantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``fake_quantize(weight, bits)`` in the forward pass, identity gradient in the backward pass."""
    return _SEFPStraightThrough.apply(weight, check_bits(bits))


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward uses its weight fake-quantized to E5M``bits``.

    It shares the ``weight``/``bias`` Parameters of the linear it was built
    from (the float master weights), so parameter names, state-dict keys and
    optimizer bindings do not change. ``bits = None`` runs in full precision.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.bits: int | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> FakeQuantLinear:
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_features = linear.in_features
        module.out_features = linear.out_features
        module.weight = linear.weight
        module.bias = linear.bias
        module.bits = None
        return module

    def to_linear(self) -> nn.Linear:
        linear = nn.Linear.__new__(nn.Linear)
        nn.Module.__init__(linear)
        linear.in_features = self.in_features
        linear.out_features = self.out_features
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.bits is None else ste_fake_quantize(self.weight, self.bits)
        return F.linear(x, weight, self.bias)

    def extra_repr(self) -> str:
        precision = "FP" if self.bits is None else f"E5M{self.bits}"
        return f"{super().extra_repr()}, precision={precision}"


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def attach_fake_quant(model: nn.Module, quantize_lm_head: bool = False) -> list[str]:
    """Swap the SEFP-selected linears of ``model`` for :class:`FakeQuantLinear`, in place.

    The layers are the ones ``convert.select_sefp_linears`` picks, so tuning
    quantizes exactly what export will. Returns their names. Idempotent.
    """
    names = select_sefp_linears(model, quantize_lm_head)
    for name in names:
        module = model.get_submodule(name)
        if not isinstance(module, FakeQuantLinear):
            _replace(model, name, FakeQuantLinear.from_linear(module))
    return names


def detach_fake_quant(model: nn.Module) -> None:
    """Put plain ``nn.Linear`` modules (same Parameters) back, in place."""
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
