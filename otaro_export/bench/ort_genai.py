"""The onnxruntime-genai int4 anchor row of ``otaro bench`` (used only when the package is installed).

onnxruntime-genai's model builder turns the same float HF model into its own
int4 ONNX graph (MatMulNBits, GroupQueryAttention, SkipSimplifiedLayerNormalization):
what a user who wants a small, fast ONNX model would pick instead of us. The
build runs once per model and is cached beside the other benchmark artifacts.
"""

from __future__ import annotations

import fcntl
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from otaro_export import process_memory as memory
from otaro_export.bench.worker import Engine
from otaro_export.errors import OtaroError

LABEL = "onnxruntime-genai int4"
RUNTIME = "onnxruntime-genai"


def available() -> bool:
    return importlib.util.find_spec("onnxruntime_genai") is not None


def hf_directory(model: str) -> Path:
    """A plain HF directory of ``model`` (the default model's converted cache), with ``architectures`` set."""
    from otaro_export import models

    if model == "default" or model.endswith(".gguf"):
        gguf = models.default_gguf_path() if model == "default" else Path(model)
        models.load_model(model)  # writes (or validates) the cached HF directory
        directory = models.gguf_cache_path(gguf)
    else:
        directory = Path(model)
    config = directory / "config.json"
    if not config.is_file() or not json.loads(config.read_text()).get("architectures"):
        raise OtaroError(f"{directory} has no config.json with `architectures`: onnxruntime-genai cannot build it")
    return directory


def build_int4(model: str, out: Path, log: Callable[[str], None] = print, timeout_s: float = 1800) -> Path:
    """``python -m onnxruntime_genai.models.builder -p int4 -e cpu`` into ``out`` (cached; atomic)."""
    out = Path(out)
    if (out / "genai_config.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out / "genai_config.json").is_file():
            return out
        source = hf_directory(model)
        staging = out.with_name(f"{out.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(source), "-o", str(staging)]
        cmd += ["-p", "int4", "-e", "cpu", "-c", str(staging) + "-cache"]
        log(f"building the onnxruntime-genai int4 model from {source} ...")
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            if proc.returncode != 0 or not (staging / "genai_config.json").is_file():
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
                raise OtaroError(f"onnxruntime-genai's model builder failed (exit {proc.returncode}): {tail}")
            shutil.rmtree(out, ignore_errors=True)
            staging.rename(out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(str(staging) + "-cache", ignore_errors=True)
        log(f"  built in {time.perf_counter() - t0:.0f}s")
    return out


class OrtGenaiEngine(Engine):
    """Greedy generation of ``new_tokens`` after ``prompt_ids`` (EOS ignored), like the other rows."""

    def __init__(self, job: dict) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.rss_base = memory.rss_mib()
        threads = int(job["threads"])
        self.ids = list(job["prompt_ids"])
        t0 = time.perf_counter()
        config = og.Config(str(job["directory"]))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
        self.model = og.Model(config)
        self.load_s = time.perf_counter() - t0
        self.rss_load = memory.rss_mib()
        self.mapped_file = Path(job["directory"]) / "model.onnx.data"

    def generate(self, new_tokens: int) -> tuple[list[int], float, float]:
        og, ids = self.og, self.ids
        params = og.GeneratorParams(self.model)
        total = len(ids) + new_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)  # min_length: no early EOS
        generator = og.Generator(self.model, params)
        tokens: list[int] = []
        start = time.perf_counter()
        generator.append_tokens(ids)  # the prefill
        first = start
        while not generator.is_done() and len(tokens) < new_tokens:
            generator.generate_next_token()
            tokens.append(int(generator.get_next_tokens()[0]))
            if len(tokens) == 1:
                first = time.perf_counter()
        end = time.perf_counter()
        if len(tokens) != new_tokens:
            raise RuntimeError(f"onnxruntime-genai generated {len(tokens)} tokens, expected {new_tokens}")
        return tokens, len(ids) / (first - start), (len(tokens) - 1) / (end - first)
