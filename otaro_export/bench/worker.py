"""Measure ONE benchmark configuration; run as a child process by :mod:`.runner`.

One process per (artifact, precision) so peak RSS belongs to that
configuration alone. Two ways to run it:

* ``python -m otaro_export.bench.worker '<json job>'``: load, warm up, time
  ``runs`` generations back to back, print one line ``BENCH_RESULT <json>`` on
  stdout and exit (the slow portable fallbacks and the switching jobs);
* ``python -m otaro_export.bench.worker --serve '<json job>'``: load and warm
  up, print ``BENCH_READY <json>``, then wait on stdin for one command per line
  (used by :mod:`.interleave`, which runs one configuration at a time):
  ``{"cmd": "run"}`` times one generation and answers ``BENCH_RUN <json>``;
  ``{"cmd": "finish"}`` answers ``BENCH_RESULT <json>`` (every run plus the
  memory readings) and exits. The protocol lines go to the process's original
  stdout; anything the engines print is sent to stderr, so it cannot split one.

Jobs:

* ``{"kind": "session", "directory", "bits", "use_library", ...}``: an
  exported artifact through ``otaro_export.runtime.load``. An ExecuTorch session
  undoes the runtime's mlock at load (``lazy_weights``, see
  ``executorch_session.release_locked_pages``), so ``artifact_mapped_rss_mib``
  counts only what this precision touched;
* ``{"kind": "llama_cpp", "gguf", ...}``: llama.cpp (llama-cpp-python) on a GGUF;
* ``{"kind": "ort_genai", "directory", ...}``: onnxruntime-genai on its builder's int4 model;
* ``{"kind": "engine", "engine": "module:Class", ...}``: any class with the
  :class:`Engine` interface (the tests' fake engines);
* ``{"kind": "switch", "directory", ...}``: precision-switching cost (:mod:`.switching`; one-shot only).

Common fields: ``prompt_ids`` (the same token ids for every configuration),
``new_tokens``, ``runs`` (timed generations, after one short warm-up; one-shot
only), ``threads``, ``rewarm_tokens`` (serve only: an untimed generation of
that many tokens right before every timed one, default 4; see :mod:`.interleave`).
Decode tokens/s counts the tokens after the first (which comes from prefill),
exactly as :class:`otaro_export.runtime.GenerationStats` does.
"""

from __future__ import annotations

import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from otaro_export import process_memory as memory

RESULT_PREFIX = "BENCH_RESULT "
READY_PREFIX = "BENCH_READY "
RUN_PREFIX = "BENCH_RUN "
#: the warm-up generation only has to touch every weight once; its length does not matter
WARMUP_TOKENS = 16
#: serve mode: untimed tokens generated right before each timed run (thread pools awake, weights in cache)
REWARM_TOKENS = 4


def _summary(prefill: list[float], decode: list[float]) -> dict:
    return {
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_tok_s_runs": prefill,
        "decode_tok_s_runs": decode,
    }


class Engine:
    """A loaded model. Subclasses set ``load_s``, ``rss_base``, ``rss_load``, ``mapped_file`` in ``__init__``."""

    load_s: float = 0.0
    rss_base: float = float("nan")
    rss_load: float = float("nan")
    mapped_file: str | Path | None = None

    def generate(self, new_tokens: int) -> tuple[list[int], float, float]:
        """Greedy ``new_tokens`` after the job's prompt (EOS ignored): (tokens, prefill tok/s, decode tok/s)."""
        raise NotImplementedError

    def extra(self) -> dict:
        return {}

    def result(self, prefill: list[float], decode: list[float], out: list[int]) -> dict:
        """The fields every engine reports: speed summary, load time, memory, first tokens."""
        mapped = memory.mapped_file_rss_mib(self.mapped_file) if self.mapped_file is not None else float("nan")
        return {
            **(_summary(prefill, decode) if decode else {}),
            "load_s": self.load_s,
            "rss_base_mib": self.rss_base,
            "rss_after_load_mib": self.rss_load,
            "rss_mib": memory.rss_mib(),
            "peak_rss_mib": memory.peak_rss_mib(),
            "artifact_mapped_rss_mib": mapped,
            "first_tokens": out[:16],
            **self.extra(),
        }


class SessionEngine(Engine):
    def __init__(self, job: dict) -> None:
        from otaro_export.runtime import load

        self.rss_base = memory.rss_mib()
        options = {"num_threads": int(job["threads"])}
        if job.get("use_library") is not None:
            options["use_library"] = bool(job["use_library"])
        t0 = time.perf_counter()
        self.session = load(job["directory"], **options)
        self.load_s = time.perf_counter() - t0
        self.rss_load = memory.rss_mib()
        self.mapped_file = Path(job["directory"]) / self.session.manifest.artifact
        self.mapped_after_load = memory.mapped_file_rss_mib(self.mapped_file)
        self.ids, self.bits = list(job["prompt_ids"]), int(job["bits"])

    def generate(self, new_tokens: int) -> tuple[list[int], float, float]:
        out = self.session.generate_ids(self.ids, self.bits, new_tokens, stop_at_eos=False)
        if len(out) != new_tokens:
            raise RuntimeError(f"generated {len(out)} tokens, expected {new_tokens} (max_seq_len too small?)")
        stats = self.session.last_stats
        return out, stats.prefill_tokens_per_s, stats.decode_tokens_per_s

    def extra(self) -> dict:
        return {
            "artifact_mapped_after_load_mib": self.mapped_after_load,
            "paged_out_after_load": bool(getattr(self.session, "lazy_weights", False)),
        }


class LlamaCppEngine(Engine):
    def __init__(self, job: dict) -> None:
        from llama_cpp import Llama

        self.rss_base = memory.rss_mib()
        threads = int(job["threads"])
        self.ids = list(job["prompt_ids"])
        t0 = time.perf_counter()
        self.llm = Llama(
            model_path=str(job["gguf"]),
            n_threads=threads,
            n_threads_batch=threads,
            n_ctx=int(job["n_ctx"]),
            verbose=False,
        )
        self.load_s = time.perf_counter() - t0
        self.rss_load = memory.rss_mib()
        self.mapped_file = job["gguf"]

    def generate(self, new_tokens: int) -> tuple[list[int], float, float]:
        tokens: list[int] = []
        self.llm.reset()
        start = time.perf_counter()
        first = start
        # temp=0 is greedy in llama-cpp-python; we stop after `new` tokens (EOS ignored, like stop_at_eos=False)
        for token in self.llm.generate(self.ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == 1:
                first = time.perf_counter()
            if len(tokens) >= new_tokens:
                break
        end = time.perf_counter()
        prefill_s, decode_s = first - start, end - first
        return tokens, len(self.ids) / prefill_s, (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0


def open_engine(job: dict) -> Engine:
    kind = job.get("kind")
    if kind == "session":
        return SessionEngine(job)
    if kind == "llama_cpp":
        return LlamaCppEngine(job)
    if kind == "ort_genai":
        from otaro_export.bench.ort_genai import OrtGenaiEngine

        return OrtGenaiEngine(job)
    if kind == "engine":
        module, _, name = str(job.get("engine", "")).partition(":")
        if not module or not name:
            raise ValueError(f"job kind 'engine' needs 'engine': 'module:Class', got {job.get('engine')!r}")
        return getattr(importlib.import_module(module), name)(job)
    raise ValueError(f"unknown benchmark job kind {kind!r}")


def warm_up(engine: Engine, job: dict) -> list[int]:
    """One untimed generation: every weight paged in (the session kind only needs a few tokens for that)."""
    new = int(job["new_tokens"])
    return engine.generate(min(new, WARMUP_TOKENS) if job.get("kind") == "session" else new)[0]


def measure(job: dict) -> dict:
    """Warm-up, then ``runs`` timed generations back to back."""
    engine = open_engine(job)
    out = warm_up(engine, job)
    prefill, decode = [], []
    for _ in range(int(job["runs"])):
        out, p, d = engine.generate(int(job["new_tokens"]))
        prefill.append(p)
        decode.append(d)
    return engine.result(prefill, decode, out)


def run_job(job: dict) -> dict:
    if job.get("kind") == "switch":
        from otaro_export.bench.switching import measure_switching

        return measure_switching(job)
    return measure(job)


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this worker when the bench process dies.

    An idle worker may be stopped (SIGSTOP) and holds its whole model; if the bench is killed (a
    SIGTERM, a closed terminal) no cleanup of its own runs, and a stopped worker never reads the
    closed pipe, so without this it would stay forever. SIGKILL also ends a stopped process.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0)


def serve(job: dict) -> int:
    """Serve mode (see the module docstring). Blocks in a read on stdin between commands: an idle worker sleeps."""
    _die_with_parent()
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)  # the protocol's own copy of stdout
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # engines' prints (Python or C) go to stderr

    def send(prefix: str, payload: dict) -> None:
        channel.write(prefix + json.dumps(payload) + "\n")
        channel.flush()

    engine = open_engine(job)
    new, rewarm = int(job["new_tokens"]), int(job.get("rewarm_tokens", REWARM_TOKENS))
    out = warm_up(engine, job)
    send(READY_PREFIX, {"pid": os.getpid(), "load_s": engine.load_s, "rss_mib": memory.rss_mib()})
    prefill, decode = [], []
    while True:
        line = sys.stdin.readline()
        if not line:
            return 0  # the coordinator is gone
        cmd = json.loads(line).get("cmd")
        if cmd == "run":
            if rewarm > 0:
                engine.generate(min(rewarm, new))
            out, p, d = engine.generate(new)
            prefill.append(p)
            decode.append(d)
            send(RUN_PREFIX, {"prefill_tok_s": p, "decode_tok_s": d})
        elif cmd == "finish":
            send(RESULT_PREFIX, engine.result(prefill, decode, out))
            return 0
        else:
            raise ValueError(f"unknown worker command {cmd!r}")


def main(argv: list[str]) -> int:
    serving = argv[:1] == ["--serve"]
    args = argv[1:] if serving else argv
    if len(args) != 1:
        print("usage: python -m otaro_export.bench.worker [--serve] '<json job>'", file=sys.stderr)
        return 2
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    job = json.loads(args[0])
    if serving:
        return serve(job)
    result = run_job(job)
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
