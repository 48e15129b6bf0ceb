"""The ``model`` section of ``manifest.json`` (docs/FORMAT.md §7), read off a HF causal LM.

Its own module so that the export driver (``pipeline.py``) and the target
writers it calls (``onnx_export.py``, ``executorch_export.py``) do not import
each other.
"""

from __future__ import annotations


def model_info(model, source: str, max_seq_len: int) -> dict:
    """The ``model`` section of the manifest: what a runtime needs to drive the artifact."""
    cfg = model.config
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    if eos is None:
        eos = cfg.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return {
        "source": source,
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "num_layers": cfg.num_hidden_layers,
        "num_kv_heads": getattr(cfg, "num_key_value_heads", cfg.num_attention_heads),
        "head_dim": head_dim,
        "max_seq_len": max_seq_len,
        "eos_token_ids": eos_ids,
    }
