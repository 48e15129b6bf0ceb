"""The ExecuTorch decoder: :class:`ExportDecoder` with ExecuTorch's LLM custom ops or standard ops for attention.

``forward(input_ids [1, S] int64, input_pos [1] int64, bits [] int64,
logits_positions [P] int64) -> logits [1, P, V]``: the S new tokens sit at
positions ``input_pos[0] .. input_pos[0] + S - 1``; ``logits_positions``
(indices into the S new tokens) picks the rows of the vocabulary-sized matmul
that are computed (a prompt needs only its last one).

Same weights, module names and SEFP lowering as the ONNX graph (packed
``qkv_proj`` / ``gate_up_proj``, the tied embedding and ``lm_head`` one
tensor); only the runtime-specific ops differ:

* attention per layer: rotary embedding on the packed q|k heads in plain
  torch ops (XNNPACK takes them), then, by ``attention``:

  - ``"llm-ops"`` (default): in a fused program (``fused_ops``) one
    ``otaro_llm::kv_attention`` call (:mod:`otaro_export.export.executorch_ops`:
    rotary, both cache writes and attention, in the project's kernel library);
    otherwise ``llama::update_cache`` x2 (writes the new K/V
    rows in place into caches ``[1, max_seq_len, kv_heads, head_dim]`` that
    are mutable buffers of the method: state kept between ``execute`` calls,
    not stored in the file) and one ``llama::custom_sdpa`` (causal,
    grouped-query, reads the cache up to the last new position). Both ops ship
    in the executorch wheel (``executorch.extension.llm.custom_ops``), which
    registers their ``.out`` kernels in the Python runtime when imported, but
    in no aarch64 build on PyPI;
  - ``"portable"``: only standard ops, so any ExecuTorch runtime with the
    portable kernels runs it (examples/arm64). The caches are mutable buffers
    ``k_cache_i [kv_heads, head_dim, max_seq_len]`` (keys transposed) and
    ``v_cache_i [kv_heads, max_seq_len, head_dim]``; the new positions
    ``start .. start + S - 1`` are written with ``index_put_`` (ExecuTorch's
    reinplace pass keeps it in place: no copy of the cache per step), and
    attention is grouped-query bmm / softmax / bmm over positions
    ``0 .. start + S - 1`` with a causal mask over the S new ones;
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
#: how attention runs: ExecuTorch's LLM custom ops, or standard ops any ExecuTorch runtime has
ATTENTION_MODES = ("llm-ops", "portable")


def check_attention(attention: str) -> str:
    if attention not in ATTENTION_MODES:
        raise ValueError(
            f"unknown ExecuTorch attention {attention!r}; choose llm-ops (one attention kernel per layer that "
            "also writes the KV cache; the faster) or portable (standard ops only: any ExecuTorch runtime)"
        )
    return attention


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
    """:class:`ExportDecoder` whose KV caches are buffers; attention by ExecuTorch's custom ops or standard ops."""

    def __init__(
        self,
        hf_model: nn.Module,
        max_seq_len: int,
        *,
        fused_ops: bool = False,
        norm_as_linear: bool = False,
        attention: str = "llm-ops",
    ):
        check_attention(attention)
        if attention == "llm-ops" and not fused_ops:  # fused programs attend with otaro_llm::kv_attention
            load_llm_custom_ops()
        super().__init__(hf_model, max_seq_len)
        self.attention = attention
        k_shape, v_shape = self.buffer_shapes()
        for i in range(self.num_layers):
            # persistent=False: mutable state, zeros at load, never part of the weights
            self.register_buffer(f"k_cache_{i}", torch.zeros(k_shape), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(v_shape), persistent=False)
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

    def buffer_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes of the K and V cache buffers (the base class's ``cache_shape`` is the ONNX graph's).

        Portable: head-major, keys stored transposed, so that the rows attention
        reads are one slice of each buffer that ``bmm`` takes as it is (no
        transposed copy of the cache per layer and step).
        """
        kv, d, n = self.kv_heads, self.head_dim, self.max_seq_len
        if self.attention == "portable":
            return (kv, d, n), (kv, n, d)
        return (1, n, kv, d), (1, n, kv, d)

    def portable_attention(self, q, k_cache, v_cache, end: int, mask):
        """Causal grouped-query attention of q ``[1, S, H, D]`` over cache rows ``0 .. end - 1``: ``[1, S, H * D]``.

        q head ``h`` reads kv head ``h // (H / KV)`` (the repeat-interleave
        grouping of HF's Llama); ``mask [S, end]`` is 0 where a new token may
        look and -inf where it may not.
        """
        seq, kv, d = q.shape[1], self.kv_heads, self.head_dim
        group = self.num_heads // kv
        # [KV, group * S, D]: each kv head's query rows in one batch of the matmul, not repeated K/V
        qg = q.reshape(seq, kv, group, d).permute(1, 2, 0, 3).reshape(kv, group * seq, d)
        keys = k_cache.narrow(2, 0, end)  # [KV, D, end]: positions 0 .. end - 1
        values = v_cache.narrow(1, 0, end)  # [KV, end, D]
        scores = torch.bmm(qg * self.scale, keys).reshape(kv, group, seq, end) + mask
        probs = torch.softmax(scores, dim=-1).reshape(kv, group * seq, end)
        out = torch.bmm(probs, values).reshape(kv, group, seq, d).permute(2, 0, 1, 3)  # [S, KV, group, D]
        return out.reshape(1, seq, self.num_heads * d)

    def forward(self, input_ids, input_pos, bits, logits_positions):
        seq = input_ids.shape[1]
        start = input_pos[0].item()
        torch._check_is_size(start)
        torch._check(start + seq <= self.max_seq_len)
        cos = self.cos_cache.narrow(0, start, seq)  # [S, D/2]
        sin = self.sin_cache.narrow(0, start, seq)
        heads, kv = self.num_heads, self.kv_heads
        portable = self.attention == "portable"
        if portable:
            end = start + seq
            rows = torch.arange(seq, dtype=torch.int64) + start  # the new tokens' cache rows
            # a new token at position p sees rows 0 .. p: the mask is shared by every layer
            visible = torch.arange(end, dtype=torch.int64).unsqueeze(0) <= rows.unsqueeze(1)  # [S, end]
            mask = torch.where(visible, 0.0, float("-inf"))

        def attend(i, qkv):
            k_cache, v_cache = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            if self.fused_ops and not portable:  # rotary, both cache writes and attention: one kernel call
                return executorch_ops.kv_attention(
                    qkv, cos, sin, k_cache, v_cache, start, heads, kv, self.head_dim, self.scale
                )
            q = self.heads(qkv, cos, sin, 0, heads, True)
            k = self.heads(qkv, cos, sin, heads, kv, True)
            v = self.heads(qkv, cos, sin, heads + kv, kv, False)
            if portable:
                # index_put_ at the new positions (the reinplace pass keeps it in place when lowered)
                k_cache[:, :, rows] = k.reshape(seq, kv, self.head_dim).permute(1, 2, 0)
                v_cache[:, rows] = v.reshape(seq, kv, self.head_dim).transpose(0, 1)
                return self.portable_attention(q, k_cache, v_cache, end, mask)
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
