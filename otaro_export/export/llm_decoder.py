"""An export-friendly Llama-family decoder built from a HF causal LM (Llama, Qwen2, Mistral).

What the runtime graph needs, rather than what training needs:

* packed projections: ``qkv_proj`` (q, k, v concatenated along the output
  dim) and ``gate_up_proj`` (gate, up): 4 linears per layer instead of 7.
  SEFP groups run along the input dim, so quantizing a packed weight gives
  exactly the rows of its parts;
* the tied embedding and ``lm_head`` share ONE weight tensor, so the SEFP
  lowering stores one copy that both the gather and the matmul read;
* RMSNorm with the residual add fused, and attention as ONE op per layer that
  applies rotary embeddings and writes the new positions into a preallocated
  KV cache (:mod:`otaro_export.export.contrib_ops`);
* ``logits_positions`` picks the positions whose logits are computed: a
  prompt needs only its last one, so a prefill skips S - 1 rows of the
  vocabulary-sized matmul.

Module names follow HF (``model.layers.{i}.self_attn.qkv_proj``, ...), so
``quantized_layers`` in the manifest reads like the source model.

``forward(input_ids [1, S] int64, bits [] int64, seqlens_k [1] int32,
total_length [] int32, logits_positions [P] int64, past_key_0, past_value_0, ...)``
returns ``(logits [1, P, V], present_key_0, present_value_0, ...)``; the caches
are ``[1, kv_heads, max_seq_len, head_dim]`` and the S new tokens sit at
positions ``total_length - S .. total_length - 1``. ``bits`` is unused by the
float module: the SEFP lowering threads it into every SEFP node.
"""

from __future__ import annotations

import torch
from torch import nn

from otaro_export.convert import check_supported, decoder_layers
from otaro_export.errors import UnsupportedModelError
from otaro_export.export import contrib_ops


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight)
        if bias is not None:
            layer.bias.copy_(bias)
    return layer


def _packed(*linears: nn.Linear) -> nn.Linear:
    biases = [lin.bias for lin in linears]
    if any(b is None for b in biases) and not all(b is None for b in biases):
        raise UnsupportedModelError("cannot pack projections where only some have a bias")
    bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    return _linear(torch.cat([lin.weight.detach() for lin in linears]), bias)


class _Norm(nn.Module):
    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone().to(torch.float32), requires_grad=False)


class _Attention(nn.Module):
    def __init__(self, attn: nn.Module):
        super().__init__()
        self.qkv_proj = _packed(attn.q_proj, attn.k_proj, attn.v_proj)
        self.o_proj = _linear(attn.o_proj.weight.detach(), attn.o_proj.bias)


class _MLP(nn.Module):
    def __init__(self, mlp: nn.Module):
        super().__init__()
        self.gate_up_proj = _packed(mlp.gate_proj, mlp.up_proj)
        self.down_proj = _linear(mlp.down_proj.weight.detach(), mlp.down_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(contrib_ops.swiglu(self.gate_up_proj(x)))


class _Layer(nn.Module):
    def __init__(self, layer: nn.Module):
        super().__init__()
        self.input_layernorm = _Norm(layer.input_layernorm.weight)
        self.self_attn = _Attention(layer.self_attn)
        self.post_attention_layernorm = _Norm(layer.post_attention_layernorm.weight)
        self.mlp = _MLP(layer.mlp)


class _Body(nn.Module):
    def __init__(self, hf_model: nn.Module):
        super().__init__()
        inner = hf_model.model
        # a copy: reference decoders write dequantized weights into it (the source model stays intact)
        self.embed_tokens = nn.Embedding.from_pretrained(
            inner.embed_tokens.weight.detach().to(torch.float32, copy=True)
        )
        self.layers = nn.ModuleList(_Layer(layer) for layer in decoder_layers(hf_model))
        self.norm = _Norm(inner.norm.weight)


def _check_activation(cfg) -> None:
    act = getattr(cfg, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"{cfg.model_type} model with hidden_act={act!r}: the decoder export supports silu")


class ExportDecoder(nn.Module):
    """The decoder graph both exporters start from (see the module docstring for I/O)."""

    def __init__(self, hf_model: nn.Module, max_seq_len: int):
        super().__init__()
        check_supported(hf_model)
        cfg = hf_model.config
        _check_activation(cfg)
        self.config = cfg
        self.max_seq_len = int(max_seq_len)
        self.num_layers = cfg.num_hidden_layers
        self.num_heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.eps = float(cfg.rms_norm_eps)
        self.scale = self.head_dim**-0.5
        self.model = _Body(hf_model)
        hf_head = hf_model.get_output_embeddings()
        self.tied = bool(getattr(cfg, "tie_word_embeddings", False)) or (
            hf_head.weight.data_ptr() == hf_model.model.embed_tokens.weight.data_ptr()
        )
        if self.tied:
            self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
            self.lm_head.weight = self.model.embed_tokens.weight  # one tensor: one SEFP copy after lowering
        else:
            self.lm_head = _linear(hf_head.weight.detach(), getattr(hf_head, "bias", None))
        cos, sin = self._rotary_tables(hf_model)
        self.register_buffer("cos_cache", cos, persistent=False)
        self.register_buffer("sin_cache", sin, persistent=False)
        self.eval()

    def _rotary_tables(self, hf_model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos/sin(pos * inv_freq) * attention_scaling`` for every cache position, ``[max_seq_len, D/2]``."""
        rotary = getattr(hf_model.model, "rotary_emb", None)
        inv_freq = getattr(rotary, "inv_freq", None)
        if inv_freq is None or inv_freq.numel() * 2 != self.head_dim:
            raise UnsupportedModelError(
                f"{self.config.model_type} model: expected rotary embeddings over the whole head "
                f"(inv_freq of {self.head_dim // 2} entries)"
            )
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        freqs = torch.outer(torch.arange(self.max_seq_len, dtype=torch.float32), inv_freq.to(torch.float32))
        return freqs.cos() * scaling, freqs.sin() * scaling

    # -- names the exporters and the manifest use ----------------------------
    def sefp_linear_names(self, include_lm_head: bool = True) -> list[str]:
        """The packed linears that become SEFP (and ``lm_head``, tied to the embedding when the model ties)."""
        names = []
        for i in range(self.num_layers):
            names += [
                f"model.layers.{i}.self_attn.qkv_proj",
                f"model.layers.{i}.self_attn.o_proj",
                f"model.layers.{i}.mlp.gate_up_proj",
                f"model.layers.{i}.mlp.down_proj",
            ]
        return names + (["lm_head"] if include_lm_head else [])

    def io_names(self) -> tuple[list[str], list[str]]:
        inputs = ["input_ids", "bits", "seqlens_k", "total_sequence_length", "logits_positions"]
        outputs = ["logits"]
        for i in range(self.num_layers):
            inputs += [f"past_key_{i}", f"past_value_{i}"]
            outputs += [f"present_key_{i}", f"present_value_{i}"]
        return inputs, outputs

    def cache_shape(self) -> tuple[int, int, int, int]:
        return (1, self.kv_heads, self.max_seq_len, self.head_dim)

    def empty_cache(self) -> list[torch.Tensor]:
        return [torch.zeros(self.cache_shape()) for _ in range(2 * self.num_layers)]

    # -- the graph -------------------------------------------------------------
    # ``decode`` is the layer stack shared by every exporter; the attention op and the
    # norm/activation ops are hooks, so a runtime-specific subclass swaps them without
    # touching the weights or the module names (export/executorch_decoder.py: ExecuTorch's
    # LLM custom ops and KV caches kept as mutable buffers). These defaults are the ONNX
    # graph's: one onnxruntime contrib op each.
    def rms_norm(self, x, weight):
        return contrib_ops.rms_norm(x, weight, self.eps)

    def skip_rms_norm(self, x, skip, weight):
        """``(rms_norm(x + skip), x + skip)``."""
        return contrib_ops.skip_rms_norm(x, skip, weight, self.eps)

    def swiglu(self, gate_up):
        return contrib_ops.swiglu(gate_up)

    def decode(self, input_ids, logits_positions, attend):
        """Logits ``[1, P, V]`` at ``logits_positions``; ``attend(i, qkv [1, S, (H + 2 KV) * D]) -> [1, S, H * D]``."""
        body = self.model
        x = body.embed_tokens(input_ids)
        residual = x
        h = self.rms_norm(x, body.layers[0].input_layernorm.weight)
        mlp_out = None
        for i, layer in enumerate(body.layers):
            if i > 0:
                h, residual = self.skip_rms_norm(mlp_out, residual, layer.input_layernorm.weight)
            attn = attend(i, layer.self_attn.qkv_proj(h))
            h, residual = self.skip_rms_norm(
                layer.self_attn.o_proj(attn), residual, layer.post_attention_layernorm.weight
            )
            mlp_out = layer.mlp.down_proj(self.swiglu(layer.mlp.gate_up_proj(h)))
        h, _ = self.skip_rms_norm(mlp_out, residual, body.norm.weight)
        return self.lm_head(h.index_select(1, logits_positions))

    def forward(self, input_ids, bits, seqlens_k, total_length, logits_positions, *cache):
        presents = []

        def group_query_attention(i, qkv):
            attn, key, value = contrib_ops.group_query_attention(
                qkv,
                cache[2 * i],
                cache[2 * i + 1],
                seqlens_k,
                total_length,
                self.cos_cache,
                self.sin_cache,
                self.num_heads,
                self.kv_heads,
                self.scale,
            )
            presents.extend((key, value))
            return attn

        logits = self.decode(input_ids, logits_positions, group_query_attention)
        return (logits, *presents)

    # -- tracing ---------------------------------------------------------------
    def step_inputs(self, input_ids: torch.Tensor, start: int, positions=None) -> tuple:
        """Non-cache inputs for ``input_ids`` placed at ``start``; logits for ``positions`` (default: all)."""
        seq = input_ids.shape[1]
        total = start + seq
        if positions is None:
            positions = torch.arange(seq)
        return (
            input_ids,
            torch.tensor(8),
            torch.tensor([total - 1], dtype=torch.int32),
            torch.tensor(total, dtype=torch.int32),
            torch.as_tensor(positions, dtype=torch.int64),
        )

    def export(self) -> torch.export.ExportedProgram:
        """``torch.export`` with dynamic sequence and logits-position dims."""
        check_window(self.config, self.max_seq_len)
        seq = torch.export.Dim("seq", min=1, max=self.max_seq_len)
        num_logits = torch.export.Dim("num_logits", min=1, max=self.max_seq_len)
        example = self.step_inputs(torch.zeros(1, 3, dtype=torch.long), 2, [0, 2])
        dynamic = ({1: seq}, None, None, None, {0: num_logits}, tuple(None for _ in range(2 * self.num_layers)))
        with torch.no_grad():
            return torch.export.export(self, (*example, *self.empty_cache()), dynamic_shapes=dynamic, strict=False)


def check_window(cfg, max_seq_len: int) -> None:
    """Sliding-window attention would crop the cache; within the window it is plain causal attention."""
    window = getattr(cfg, "sliding_window", None)
    if cfg.model_type == "qwen2" and not getattr(cfg, "use_sliding_window", False):
        window = None
    if window is not None and max_seq_len > window:
        raise UnsupportedModelError(
            f"{cfg.model_type} model with sliding_window={window}: export with --max-seq-len <= {window} "
            f"(got {max_seq_len}); the exported graph attends to every cached position"
        )
