"""The exportable KV-cache decoder: ``forward(input_ids, cache_position, bits) -> logits``.

Wraps transformers' static-cache export module: the K/V
caches are mutable buffers of the program (state kept between ``execute``
calls, not stored in the file), ``input_ids`` ``[1, s]`` and ``cache_position``
``[s]`` have a dynamic sequence dim, and ``bits`` is a 0-dim int64 user input.

The float model is exported as-is (``bits`` unused); the shared lowering
``otaro_export.passes.lowering.lower_to_sefp`` then freezes the selected
linears to packed SEFP constants and threads ``bits`` into every
``otaro.sefp_linear`` node. The ONNX exporter runs the same lowering.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from otaro_export import ops

INPUT_NAMES = ["input_ids", "cache_position", "bits"]
FP32_INPUT_NAMES = ["input_ids", "cache_position"]
OUTPUT_NAMES = ["logits"]


def _static_cache_module(model: nn.Module, max_cache_len: int) -> nn.Module:
    """transformers' static-cache wrapper around ``model`` (needs generation_config.cache_implementation)."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    # The outer recipe's forward drops cache_position (transformers 5.23), so call
    # the inner static/hybrid-cache module directly: it sets the cache position
    # from cache_position[0] on every call.
    return TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=max_cache_len).model


@contextlib.contextmanager
def _static_cache_config(model: nn.Module):
    gen = model.generation_config
    saved = (gen.cache_implementation, gen.use_cache)
    gen.cache_implementation, gen.use_cache = "static", True
    try:
        yield
    finally:
        gen.cache_implementation, gen.use_cache = saved


class KVCacheDecoder(nn.Module):
    """``forward(input_ids [1, s], cache_position [s], bits []) -> logits [1, s, V]``.

    ``bits`` is accepted (and ignored) by the float program so that it is a
    user input from the start; the SEFP lowering connects it.
    """

    def __init__(self, cached: nn.Module):
        super().__init__()
        self.cached = cached

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        return self.cached(input_ids=input_ids, cache_position=cache_position)


class FP32KVCacheDecoder(KVCacheDecoder):
    """The float baseline's signature: no ``bits``."""

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.cached(input_ids=input_ids, cache_position=cache_position)


def export_decoder(model: nn.Module, max_cache_len: int, *, with_bits: bool = True) -> torch.export.ExportedProgram:
    """torch.export the KV-cache decoder of an HF causal LM (strict, dynamic sequence length)."""
    if max_cache_len < 2:
        raise ValueError(f"max_cache_len must be >= 2, got {max_cache_len}")
    with _static_cache_config(model), torch.no_grad():
        cached = _static_cache_module(model, max_cache_len)
        wrapper = KVCacheDecoder(cached) if with_bits else FP32KVCacheDecoder(cached)
        seq = torch.export.Dim("seq", min=1, max=max_cache_len)
        example_len = min(4, max_cache_len)
        args: tuple = (torch.zeros(1, example_len, dtype=torch.int64), torch.arange(example_len))
        shapes: dict = {"input_ids": {1: seq}, "cache_position": {0: seq}}
        if with_bits:
            args = (*args, ops.bits_tensor(8))
            shapes["bits"] = None
        # strict=True: non-strict export of this module fails later at lowering ("expected compiled_fn to be GraphModule").
        return torch.export.export(wrapper, args, dynamic_shapes=shapes, strict=True)
