"""``SEFPEmbedding``: an nn.Embedding that gathers rows of a :class:`SEFPLinear`'s planes.

For a model with tied weights, ``convert_model(quantize_lm_head=True)`` makes
``lm_head`` an SEFPLinear and the embedding one of these reading the same
buffers, so the eager model stores the matrix once, as the exported graphs do
(docs/FORMAT.md §5).
"""

from __future__ import annotations

import torch
from torch import nn

from otaro_export import ops
from otaro_export.sefp_linear import SEFPLinear


class SEFPEmbedding(nn.Module):
    def __init__(self, source: SEFPLinear):
        super().__init__()
        self.source = [source]  # a list: the planes stay owned (and saved) by the linear, not twice
        self.embedding_dim = source.in_features
        self.num_embeddings = source.out_features

    @property
    def linear(self) -> SEFPLinear:
        return self.source[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        lin = self.linear
        return ops.sefp_embedding(
            ids, lin.p0, lin.p1, lin.p2, lin.p3, lin.exponents, lin.bits, lin.in_features, lin.levels
        )

    def dequantized_weight(self, bits: int) -> torch.Tensor:
        return self.linear.dequantized_weight(bits)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, shares lm_head's SEFP planes"
