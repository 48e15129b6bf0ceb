"""The torch reference behind the runtime API: an in-memory model, same ``Session`` interface.

Runtimes are compared against this: at each precision it runs
``convert.dequantized_copy(model, bits)`` (plain float linears holding the exact
SEFP weights) with an HF ``DynamicCache``, through the same greedy loop as the
exported artifacts. Not an artifact runtime: nothing is loaded from disk.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from otaro_export.convert import check_supported, dequantized_copy, sefp_layers
from otaro_export.export.model_info import model_info
from otaro_export.manifest import Manifest
from otaro_export.runtime.session import Session


class TorchSession(Session):
    def __init__(self, model: torch.nn.Module, tokenizer=None, max_seq_len: int = 512, source: str = "in-memory"):
        check_supported(model)
        if not sefp_layers(model):
            raise ValueError("TorchSession needs a converted model (otaro_export.convert.convert_model)")
        manifest = Manifest(
            target="torch",
            artifact="",
            kernels="reference",
            kernel_library=None,
            quantized_layers=sorted(sefp_layers(model)),
            inputs=[],
            outputs=[],
            model=model_info(model, source, max_seq_len),
        )
        super().__init__(Path("."), manifest, tokenizer)
        self._model = model
        self._max_seq_len = max_seq_len
        self._references: dict[int, torch.nn.Module] = {}
        self._cache = None
        self._cache_bits: int | None = None

    @property
    def max_seq_len(self) -> int:
        return self._max_seq_len

    def reference_model(self, bits: int) -> torch.nn.Module:
        if bits not in self._references:
            self._references[bits] = dequantized_copy(self._model, bits).eval()
        return self._references[bits]

    def _reset(self) -> None:
        self._cache = None
        self._cache_bits = None

    @torch.no_grad()
    def _step(self, input_ids: np.ndarray, start_pos: int, bits: int, last_only: bool = False) -> np.ndarray:
        from transformers import DynamicCache

        if self._cache is None:
            self._cache = DynamicCache()
        ids = torch.from_numpy(input_ids)
        positions = torch.arange(start_pos, start_pos + ids.shape[1]).unsqueeze(0)
        out = self.reference_model(bits)(
            input_ids=ids, position_ids=positions, past_key_values=self._cache, use_cache=True
        )
        return out.logits.to(torch.float32).numpy()
