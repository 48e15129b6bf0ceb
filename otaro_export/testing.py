"""Tiny random-initialised models and a byte-level tokenizer, for fast tests and examples.

Shipped in the package (not only under tests/) so that helpers, examples and
downstream users can build the same fixtures.
"""

from __future__ import annotations

import torch

from otaro_export.models import LoadedModel

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
