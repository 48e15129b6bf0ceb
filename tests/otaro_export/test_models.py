import pytest
import torch

from otaro_export import models
from otaro_export.errors import ModelLoadError
from otaro_export.testing import tiny_causal_lm


def test_loads_local_hf_directory(tmp_path):
    loaded = tiny_causal_lm("mistral")
    loaded.model.save_pretrained(tmp_path)
    loaded.tokenizer.save_pretrained(tmp_path)
    back = models.load_model(tmp_path)
    assert back.model.config.model_type == "mistral" and not back.model.training
    assert back.tokenizer is not None and back.source == str(tmp_path)
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(back.model(ids).logits, loaded.model(ids).logits)


def test_weights_only_directory_has_no_tokenizer(tmp_path):
    tiny_causal_lm().model.save_pretrained(tmp_path)
    assert models.load_model(tmp_path).tokenizer is None


def test_missing_path():
    with pytest.raises(ModelLoadError, match="does not exist"):
        models.load_model("/nonexistent/model")


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        models.load_model(tmp_path)


def test_corrupt_weights(tmp_path):
    tiny_causal_lm().model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not load"):
        models.load_model(tmp_path)


def test_corrupt_gguf(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 16)
    with pytest.raises(ModelLoadError, match="could not load GGUF"):
        models.load_model(bad, use_cache=False)


def test_default_gguf_is_found():
    path = models.default_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


@pytest.mark.slow
def test_default_model_cache_matches_gguf(tmp_path, monkeypatch):
    """The cached HF directory holds exactly the weights transformers reads from the GGUF."""
    monkeypatch.setenv("OTARO_CACHE_DIR", str(tmp_path))
    fresh = models.load_model("default")  # converts the GGUF and writes the cache
    cached = models.load_model("default")  # reads the cache
    assert list(tmp_path.iterdir())
    assert fresh.model.config.model_type == "llama" and fresh.model.config.num_hidden_layers == 30
    a, b = fresh.model.state_dict(), cached.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert cached.tokenizer("Hello")["input_ids"] == fresh.tokenizer("Hello")["input_ids"]
