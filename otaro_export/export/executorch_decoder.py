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
* RMSNorm and SwiGLU (``silu(gate) * up``).

``fused_ops=True`` (the fused program) runs RMSNorm, the rotary heads and
SwiGLU as one kernel call each (:mod:`otaro_export.export.executorch_ops`,
kernels in the project's library): 16 calls per decoder layer instead of ~41.
Otherwise (portable and fp32 programs, stock runtime) they are plain torch
ops; ``norm_as_linear`` (programs whose linears XNNPACK runs) then computes
the mean of squares as a ``linear`` with a constant ``1/D`` row, so the whole
norm is one XNNPACK partition (XNNPACK has no last-dim mean of a 3-d tensor).

``bits`` is unused by the float module: the SEFP lowering threads it into
every SEFP node (as for ONNX).
"""

from __future__ import annotations

import torch
from torch import nn

from otaro_export.export import executorch_ops
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


class ExecuTorchDecoder(ExportDecoder):
    """:class:`ExportDecoder` whose KV caches are buffers and whose attention is ExecuTorch's custom ops."""

    def __init__(self, hf_model: nn.Module, max_seq_len: int, *, fused_ops: bool = False, norm_as_linear: bool = False):
        load_llm_custom_ops()
        super().__init__(hf_model, max_seq_len)
        shape = (1, self.max_seq_len, self.kv_heads, self.head_dim)
        for i in range(self.num_layers):
            # persistent=False: mutable state, zeros at load, never part of the weights
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape), persistent=False)
        self.fused_ops = bool(fused_ops)
        self.norm_as_linear = bool(norm_as_linear) and not self.fused_ops
        if self.norm_as_linear:
            d = self.model.embed_tokens.weight.shape[1]
            self.register_buffer("mean_row", torch.full((1, d), 1.0 / d), persistent=False)

    # -- the hooks of ExportDecoder: one kernel call each (fused_ops) or plain ops --
    def rms_norm(self, x, weight):
        if self.fused_ops:
            return executorch_ops.rms_norm(x, weight, self.eps)
        if self.norm_as_linear:
            mean_sq = torch.nn.functional.linear(x * x, self.mean_row)  # [1, S, 1]
        else:
            mean_sq = (x * x).mean(-1, keepdim=True)
        return x * torch.rsqrt(mean_sq + self.eps) * weight

    def skip_rms_norm(self, x, skip, weight):
        total = x + skip
        return self.rms_norm(total, weight), total

    def swiglu(self, gate_up):
        if self.fused_ops:
            return executorch_ops.swiglu(gate_up)
        gate, up = gate_up.split(gate_up.shape[-1] // 2, dim=-1)
        return torch.nn.functional.silu(gate) * up

    def heads(self, qkv, cos, sin, offset: int, count: int, rotate: bool):
        """Heads ``offset .. offset + count - 1`` of the packed projection, ``[1, S, count, D]``, rotated or not."""
        if self.fused_ops:
            return executorch_ops.rotary_heads(qkv, cos, sin, offset, count, self.head_dim, rotate)
        d = self.head_dim
        x = qkv[..., offset * d : (offset + count) * d].reshape(1, qkv.shape[1], count, d)
        return executorch_ops.rotate(x, cos, sin) if rotate else x

    def io_names(self) -> tuple[list[str], list[str]]:
        return list(INPUT_NAMES), list(OUTPUT_NAMES)

    def forward(self, input_ids, input_pos, bits, logits_positions):
        seq = input_ids.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + seq <= self.max_seq_len)
        cos = self.cos_cache.narrow(0, start, seq)  # [S, D/2]
        sin = self.sin_cache.narrow(0, start, seq)
        heads, kv = self.num_heads, self.kv_heads

        def attend(i, qkv):
            q = self.heads(qkv, cos, sin, 0, heads, True)
            k = self.heads(qkv, cos, sin, heads, kv, True)
            v = self.heads(qkv, cos, sin, heads + kv, kv, False)
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            torch.ops.llama.update_cache(k, k_cache, start)
            torch.ops.llama.update_cache(v, v_cache, start)
            out = torch.ops.llama.custom_sdpa(q, k_cache, v_cache, start, None, 0.0, True, self.scale)
            return out.reshape(1, seq, heads * self.head_dim)

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
