"""``SEFPLinear``: an nn.Linear replacement that stores packed SEFP planes and calls the op."""

from __future__ import annotations

import torch
from torch import nn

from otaro_export import ops
from otaro_export.packing import PLANE_NAMES, PackedSEFP, pack
from otaro_export.sefp import check_bits, check_levels, quantize


class SEFPLinear(nn.Module):
    """``y = x @ W_k^T + b`` with ``W`` stored once in SEFP and ``k`` chosen at run time.

    The precision lives in the ``bits`` buffer (0-dim int64). A model-level
    wrapper may instead assign one shared tensor to every layer's ``bits``
    attribute before calling the model, which is how export threads a single
    runtime ``bits`` input to all SEFP nodes.

    ``levels`` (optional buffer, float32 ``[6, 256]``) is the layer's
    reconstruction table (docs/FORMAT.md §3), passed to the op; ``None`` is the
    paper's ``floor`` rule.
    """

    def __init__(
        self,
        packed: PackedSEFP,
        bias: torch.Tensor | None = None,
        bits: int = 8,
        levels: torch.Tensor | None = None,
    ):
        super().__init__()
        self.in_features = packed.in_features
        self.out_features = packed.out_features
        for name, plane in zip(PLANE_NAMES, packed.planes()):
            self.register_buffer(name, plane)
        self.register_buffer("exponents", packed.exponents)
        if bias is not None:
            self.register_buffer("bias", bias.detach().to(torch.float32).contiguous())
        else:
            self.bias = None
        if levels is not None:
            self.register_buffer("levels", check_levels(levels.detach().to(torch.float32).contiguous()))
        else:
            self.levels = None
        self.register_buffer("bits", ops.bits_tensor(bits), persistent=False)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, name: str = "weight", bits: int = 8, levels: torch.Tensor | None = None
    ) -> SEFPLinear:
        """Quantize ``linear.weight`` (errors name ``name`` on NaN/Inf); ``levels``: the reconstruction table."""
        packed = pack(quantize(linear.weight, name=name))
        return cls(packed, linear.bias, bits=bits, levels=levels)

    def packed(self) -> PackedSEFP:
        return PackedSEFP(self.p0, self.p1, self.p2, self.p3, self.exponents, self.in_features)

    def set_bits(self, bits: int) -> None:
        self.bits = ops.bits_tensor(check_bits(bits))

    def dequantized_weight(self, bits: int) -> torch.Tensor:
        return self.packed().unpack().dequantize(bits, self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = ops.sefp_linear(
            x.to(torch.float32), self.p0, self.p1, self.p2, self.p3, self.exponents, self.bits, self.bias, self.levels
        )
        return y.to(dtype)

    def extra_repr(self) -> str:
        rule = "floor" if self.levels is None else "table"
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"levels={rule}"
        )
