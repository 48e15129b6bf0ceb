import pytest

from otaro_export.testing import tiny_causal_lm
from otaro_export.train.tune_data import Sample

_TEXTS = (
    ("What is the sky?", "The sky is the air above us, blue by day."),
    ("Name a fruit.", "An apple is a fruit."),
    ("Say hi.", "Hi there, nice to meet you!"),
    ("Count to five.", "One, two, three, four, five."),
    ("What is water?", "Water is a clear liquid we drink."),
    ("Give a color.", "Green, like grass in spring."),
)


@pytest.fixture
def tiny():
    """A fresh tiny random llama (float32, eval) with a byte-level tokenizer."""
    return tiny_causal_lm("llama", seed=0)


@pytest.fixture
def chat_samples(tiny):
    """Chat samples (answer scored) built by tokenizing fixed texts: no generation cost."""
    tok = tiny.tokenizer
    out = []
    for prompt, answer in _TEXTS:
        p = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True)
        if hasattr(p, "keys"):
            p = p["input_ids"]
        a = tok(answer, add_special_tokens=False)["input_ids"]
        out.append(Sample(tuple(list(p) + list(a) + [tok.eos_token_id]), len(p)))
    return out
