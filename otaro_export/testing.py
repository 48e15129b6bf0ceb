"""Test fixtures: tiny random-initialised models, a byte-level tokenizer, tiny cached exports.

The one module of the package that exists for tests and examples; nothing else
in the package imports it. Shipped (not only under tests/) so that examples and
downstream users can build the same fixtures.

``tiny_onnx_artifact`` / ``tiny_executorch_artifact`` export :func:`tiny_causal_lm`
(seed 0) into a directory under ``root`` named by their settings, unless a
finished export is already there, and return ``(directory, loaded_model)``.
Tests in different directories share one export per pytest run by passing the
same ``root``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from otaro_export.manifest import MANIFEST_NAME
from otaro_export.models import LoadedModel

#: KV-cache capacity of the tiny exports (small: lowering time grows with it)
TINY_ONNX_MAX_SEQ_LEN = 64
TINY_EXECUTORCH_MAX_SEQ_LEN = 32

_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + 3 specials = 259 ids) that round-trips any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok)
    fast.add_special_tokens(
        {"eos_token": "<|im_end|>", "bos_token": "<|im_start|>", "additional_special_tokens": ["<|endoftext|>"]}
    )
    fast.chat_template = _CHAT_TEMPLATE
    return fast


TINY_VOCAB = 259


def tiny_config(model_type: str = "llama", vocab_size: int = TINY_VOCAB, **overrides):
    from transformers import AutoConfig

    base = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=96,  # 96 % 64 != 0: exercises padded groups in down_proj
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        eos_token_id=vocab_size - 3 if vocab_size == TINY_VOCAB else None,
    )
    if model_type == "mistral":
        base["sliding_window"] = None
    base.update(overrides)
    return AutoConfig.for_model(model_type, **base)


def tiny_causal_lm(model_type: str = "llama", seed: int = 0, **overrides) -> LoadedModel:
    """A random 2-layer ``model_type`` causal LM (float32, eval) with :func:`tiny_tokenizer`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(model_type, **overrides))
    # Random init gives weights of std 0.02; scale up so logits are not all ties.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(5.0)
    model.eval()
    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    return LoadedModel(model=model, tokenizer=tokenizer, source=f"tiny-random-{model_type}")


def tiny_onnx_artifact(model_type: str, root: Path, kernels: str = "fused") -> tuple[Path, LoadedModel]:
    """A tiny ONNX export in ``root/<model_type>-<kernels>``, exported on first use."""
    from otaro_export.export.pipeline import ExportOptions, export_model

    loaded = tiny_causal_lm(model_type)
    out = Path(root) / f"{model_type}-{kernels}"
    if not (out / MANIFEST_NAME).is_file():
        options = ExportOptions(target="onnx", output=out, kernels=kernels, max_seq_len=TINY_ONNX_MAX_SEQ_LEN)
        export_model(options, log=lambda _msg: None, loaded=loaded)
    return out, loaded


def tiny_executorch_artifact(
    root: Path,
    model_type: str = "llama",
    kernels: str = "fused",
    num_layers: int = 2,
    external_weights: bool = False,
    attention: str | None = None,
) -> tuple[Path, LoadedModel]:
    """A tiny ``.pte`` export under ``root``, exported on first use; the model returned is the float one.

    ``attention``: the exporter's ``--attention`` (None: its default, llm-ops).
    """
    from otaro_export.export.pipeline import ExportOptions, export_model

    loaded = tiny_causal_lm(model_type, num_hidden_layers=num_layers)
    name = f"{model_type}-{num_layers}l-{kernels}{'-ptd' if external_weights else ''}"
    name += f"-{attention}-attention" if attention else ""
    out = Path(root) / name
    if not (out / MANIFEST_NAME).is_file():
        options = ExportOptions(
            target="executorch",
            output=out,
            kernels=kernels,
            max_seq_len=TINY_EXECUTORCH_MAX_SEQ_LEN,
            external_weights=external_weights,
            attention=attention,
        )
        export_model(options, log=lambda _msg: None, loaded=loaded)
        loaded = tiny_causal_lm(model_type, num_hidden_layers=num_layers)  # export may have touched the config
    return out, loaded
