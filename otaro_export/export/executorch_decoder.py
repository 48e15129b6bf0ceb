"""The ExecuTorch decoder: :class:`ExportDecoder` with ExecuTorch's LLM custom ops for attention.

``forward(input_ids [1, S] int64, input_pos [1] int64, bits [] int64,
logits_positions [P] int64) -> logits [1, P, V]``: the S new tokens sit at
positions ``input_pos[0] .. input_pos[0] + S - 1``; ``logits_positions``
(indices into the S new tokens) picks the rows of the vocabulary-sized matmul
that are computed (a prompt needs only its last one).

Same weights, module names and SEFP lowering as the ONNX graph (packed
``qkv_proj`` / ``gate_up_proj``, the tied embedding and ``lm_head`` one
tensor); only the runtime-specific ops differ:

* attention per layer: rotary embedding on the packed q|k heads in plain
  torch ops (XNNPACK takes them), then ``llama::update_cache`` x2 (writes the
  new K/V rows in place into caches ``[1, max_seq_len, kv_heads, head_dim]``
  that are mutable buffers of the method: state kept between ``execute``
  calls, not stored in the file) and one ``llama::custom_sdpa`` (causal,
  grouped-query, reads the cache up to the last new position). Both ops ship in
  the executorch wheel (``executorch.extension.llm.custom_ops``), which
  registers their ``.out`` kernels in the Python runtime when imported;
* RMSNorm and SwiGLU (``silu(gate) * up``) in plain ops. With
  ``norm_as_linear`` (programs whose linears XNNPACK runs) the mean of squares
  is a ``linear`` with a constant ``1/D`` row, so the whole norm is one XNNPACK
  partition (XNNPACK has no last-dim mean of a 3-d tensor).

``bits`` is unused by the float module: the SEFP lowering threads it into
every SEFP node (as for ONNX).
"""

from __future__ import annotations

import torch
from torch import nn

from otaro_export.export.llm_decoder import ExportDecoder, check_window

INPUT_NAMES = ["input_ids", "input_pos", "bits", "logits_positions"]
OUTPUT_NAMES = ["logits"]


def load_llm_custom_ops() -> None:
    """Register ``llama::update_cache`` / ``llama::custom_sdpa`` (torch and ExecuTorch kernels) once."""
    if hasattr(torch.ops.llama, "custom_sdpa"):
        try:
            torch.ops.llama.custom_sdpa.default  # noqa: B018
            return
        except (AttributeError, RuntimeError):
            pass
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotary embedding of ``x [1, S, heads, D]`` with ``cos``/``sin`` ``[S, 1, D/2]``."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class ExecuTorchDecoder(ExportDecoder):
    """:class:`ExportDecoder` whose KV caches are buffers and whose attention is ExecuTorch's custom ops."""

    def __init__(self, hf_model: nn.Module, max_seq_len: int, *, norm_as_linear: bool = False):
        load_llm_custom_ops()
        super().__init__(hf_model, max_seq_len)
        shape = (1, self.max_seq_len, self.kv_heads, self.head_dim)
        for i in range(self.num_layers):
            # persistent=False: mutable state, zeros at load, never part of the weights
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)
        self.norm_as_linear = bool(norm_as_linear)
        if self.norm_as_linear:
            d = self.model.embed_tokens.weight.shape[1]
            self.register_buffer("mean_row", torch.full((1, d), 1.0 / d), persistent=False)

    # -- the ops XNNPACK (or the portable kernels) run -------------------------
    def rms_norm(self, x, weight):
        if self.norm_as_linear:
            mean_sq = torch.nn.functional.linear(x * x, self.mean_row)  # [1, S, 1]
        else:
            mean_sq = (x * x).mean(-1, keepdim=True)
        return x * torch.rsqrt(mean_sq + self.eps) * weight

    def skip_rms_norm(self, x, skip, weight):
        total = x + skip
        return self.rms_norm(total, weight), total

    def swiglu(self, gate_up):
        gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    def io_names(self) -> tuple[list[str], list[str]]:
        return list(INPUT_NAMES), list(OUTPUT_NAMES)

    def forward(self, input_ids, input_pos, bits, logits_positions):
        seq = input_ids.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + seq <= self.max_seq_len)
        cos = self.cos_cache.narrow(0, start, seq).unsqueeze(1)  # [S, 1, D/2]
        sin = self.sin_cache.narrow(0, start, seq).unsqueeze(1)
        heads, kv, d = self.num_heads, self.kv_heads, self.head_dim

        def attend(i, qkv):
            qk = rotary(qkv[..., : (heads + kv) * d].reshape(1, seq, heads + kv, d), cos, sin)
            q, k = qk[:, :, :heads], qk[:, :, heads:]
            v = qkv[..., (heads + kv) * d :].reshape(1, seq, kv, d)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            torch.ops.llama.update_cache(k, k_cache, start)
            torch.ops.llama.update_cache(v, v_cache, start)
            out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0.0, True, self.scale)
            return out.reshape(1, seq, heads * d)

        return self.decode(input_ids, logits_positions, attend)

    # -- tracing ---------------------------------------------------------------
    def step_inputs(self, input_ids: torch.Tensor, start: int, positions=None) -> tuple:
        seq = input_ids.shape[1]
        if positions is None:
            positions = torch.arange(seq)
        return (
            input_ids,
            torch.tensor([start], dtype=torch.int64),
            torch.tensor(8),
            torch.as_tensor(positions, dtype=torch.int64),
        )

    def reset_cache(self) -> None:
        for name, buf in self.named_buffers():
            if name.startswith(("k_cache_", "v_cache_")):
                buf.zero_()

    def export(self) -> torch.export.ExportedProgram:
        """``torch.export`` with dynamic sequence and logits-position dims (strict: see the module docstring)."""
        check_window(self.config, self.max_seq_len)
        seq = torch.export.Dim("seq", min=1, max=self.max_seq_len)
        num_logits = torch.export.Dim("num_logits", min=1, max=self.max_seq_len)
        example = self.step_inputs(torch.zeros(1, 3, dtype=torch.long), 2, [0, 2])
        dynamic = ({1: seq}, None, None, {0: num_logits})
        with torch.no_grad():
            ep = torch.export.export(self, example, dynamic_shapes=dynamic, strict=False)
        self.reset_cache()  # tracing ran the ops on the real buffers
        return ep
