"""A decoder wrapper with explicit KV-cache tensors, for exporting prefill + decode as ONE graph.

``forward(input_ids [1, S], cache_position [S], bits [], past_key_0, past_value_0, ...)``
returns ``(logits [1, S, V], present_key_0, present_value_0, ...)`` where each
past tensor is ``[1, kv_heads, P, head_dim]`` (P may be 0 for the prefill) and
each present tensor is the past with the S new positions appended
(``[1, kv_heads, P + S, head_dim]``). The caller feeds presents back as the
next call's pasts, so generation is linear in length, not quadratic.

Passing a transformers ``Cache`` object as a graph input fails or silently
drops the cache (measured with transformers 5.x), so the cache is rebuilt inside from
plain tensors. ``bits`` is unused by the float graph; the passes wire it to
every SEFP node.
"""

from __future__ import annotations

import torch
from torch import nn

from otaro_export.convert import check_supported
from otaro_export.errors import UnsupportedModelError


def kv_shape(model: nn.Module) -> tuple[int, int, int]:
    """(num_layers, kv_heads, head_dim) of a HF decoder."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, getattr(cfg, "num_key_value_heads", cfg.num_attention_heads), head_dim


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    """Graph input and output names, in order (also written to the manifest)."""
    inputs = ["input_ids", "cache_position", "bits"]
    outputs = ["logits"]
    for i in range(num_layers):
        inputs += [f"past_key_{i}", f"past_value_{i}"]
        outputs += [f"present_key_{i}", f"present_value_{i}"]
    return inputs, outputs


class KVCacheDecoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        check_supported(model)
        self.model = model
        self.num_layers, self.kv_heads, self.head_dim = kv_shape(model)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor, bits: torch.Tensor, *past: torch.Tensor):
        from transformers import DynamicCache

        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = DynamicCache(ddp_cache_data=pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            position_ids=cache_position.unsqueeze(0),
            cache_position=cache_position,
            past_key_values=cache,
            use_cache=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)

    def empty_past(self, length: int = 0, dtype=torch.float32) -> list[torch.Tensor]:
        shape = (1, self.kv_heads, length, self.head_dim)
        return [torch.zeros(shape, dtype=dtype) for _ in range(2 * self.num_layers)]

    def example_inputs(self, seq: int = 3, past: int = 4) -> tuple:
        """Inputs for tracing: non-trivial S and P so neither dimension specialises to 0/1."""
        ids = torch.zeros(1, seq, dtype=torch.long)
        return (ids, torch.arange(past, past + seq), torch.tensor(8), *self.empty_past(past))

    def dynamic_shapes(self, max_seq_len: int):
        seq = torch.export.Dim("seq", min=1, max=max_seq_len)
        past = torch.export.Dim("past", min=0, max=max_seq_len)
        kv = {2: past}
        return ({1: seq}, {0: seq}, None, tuple(kv for _ in range(2 * self.num_layers)))

    def check_window(self, max_seq_len: int) -> None:
        """Sliding-window attention would crop the cache; within the window it is plain causal attention."""
        cfg = self.model.config
        window = getattr(cfg, "sliding_window", None)
        if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
            window = None
        if window is not None and max_seq_len > window:
            raise UnsupportedModelError(
                f"{cfg.model_type} model with sliding_window={window}: export with --max-seq-len <= {window} "
                f"(got {max_seq_len}); the explicit KV-cache graph keeps every position"
            )

    def export(self, max_seq_len: int) -> torch.export.ExportedProgram:
        self.check_window(max_seq_len)
        with torch.no_grad():
            return torch.export.export(
                self, self.example_inputs(), dynamic_shapes=self.dynamic_shapes(max_seq_len), strict=False
            )
