"""Measure ONE benchmark configuration; run as a child process by :mod:`.runner`.

``python -m otaro_export.bench.worker '<json job>'`` prints one line
``BENCH_RESULT <json>`` on stdout. One process per (artifact, precision) so
peak RSS belongs to that configuration alone. Jobs:

* ``{"kind": "session", "directory", "bits", "use_library", ...}``: an
  exported artifact through ``otaro_export.runtime.load``. An ExecuTorch session
  undoes the runtime's mlock at load (``lazy_weights``, see
  ``executorch_session.release_locked_pages``), so ``artifact_mapped_rss_mib``
  counts only what this precision touched;
* ``{"kind": "llama_cpp", "gguf", ...}``: llama.cpp (llama-cpp-python) on a GGUF;
* ``{"kind": "ort_genai", "directory", ...}``: onnxruntime-genai on its builder's int4 model;
* ``{"kind": "switch", "directory", ...}``: precision-switching cost (:mod:`.switching`).

Common fields: ``prompt_ids`` (the same token ids for every configuration),
``new_tokens``, ``runs`` (timed generations, after one short warm-up), ``threads``.
Decode tokens/s counts the tokens after the first (which comes from prefill),
exactly as :class:`otaro_export.runtime.GenerationStats` does.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from otaro_export import process_memory as memory

RESULT_PREFIX = "BENCH_RESULT "
#: the warm-up generation only has to touch every weight once; its length does not matter
WARMUP_TOKENS = 16


def _summary(prefill: list[float], decode: list[float]) -> dict:
    return {
        "prefill_tok_s": statistics.median(prefill),
        "decode_tok_s": statistics.median(decode),
        "prefill_tok_s_runs": prefill,
        "decode_tok_s_runs": decode,
    }


def _measurement(prefill, decode, load_s, rss_base, rss_load, mapped_file, out) -> dict:
    """The fields every engine reports: speed summary, load time, memory, first tokens."""
    return {
        **_summary(prefill, decode),
        "load_s": load_s,
        "rss_base_mib": rss_base,
        "rss_after_load_mib": rss_load,
        "rss_mib": memory.rss_mib(),
        "peak_rss_mib": memory.peak_rss_mib(),
        "artifact_mapped_rss_mib": memory.mapped_file_rss_mib(mapped_file),
        "first_tokens": out[:16],
    }


def measure_session(job: dict) -> dict:
    from otaro_export.runtime import load

    rss_base = memory.rss_mib()
    options = {"num_threads": int(job["threads"])}
    if job.get("use_library") is not None:
        options["use_library"] = bool(job["use_library"])
    t0 = time.perf_counter()
    session = load(job["directory"], **options)
    load_s = time.perf_counter() - t0
    rss_load = memory.rss_mib()
    artifact = Path(job["directory"]) / session.manifest.artifact
    mapped_after_load = memory.mapped_file_rss_mib(artifact)
    ids, bits, new = list(job["prompt_ids"]), int(job["bits"]), int(job["new_tokens"])
    session.generate_ids(ids, bits, min(new, WARMUP_TOKENS), stop_at_eos=False)  # warm-up: every weight paged in
    prefill, decode = [], []
    for _ in range(int(job["runs"])):
        out = session.generate_ids(ids, bits, new, stop_at_eos=False)
        if len(out) != new:
            raise RuntimeError(f"generated {len(out)} tokens, expected {new} (max_seq_len too small?)")
        prefill.append(session.last_stats.prefill_tokens_per_s)
        decode.append(session.last_stats.decode_tokens_per_s)
    return {
        **_measurement(prefill, decode, load_s, rss_base, rss_load, artifact, out),
        "artifact_mapped_after_load_mib": mapped_after_load,
        "paged_out_after_load": bool(getattr(session, "lazy_weights", False)),
    }


def measure_llama_cpp(job: dict) -> dict:
    from llama_cpp import Llama

    rss_base = memory.rss_mib()
    threads = int(job["threads"])
    ids, new = list(job["prompt_ids"]), int(job["new_tokens"])
    t0 = time.perf_counter()
    llm = Llama(
        model_path=str(job["gguf"]),
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=int(job["n_ctx"]),
        verbose=False,
    )
    load_s = time.perf_counter() - t0
    rss_load = memory.rss_mib()

    def generate() -> tuple[list[int], float, float]:
        tokens: list[int] = []
        llm.reset()
        start = time.perf_counter()
        first = start
        # temp=0 is greedy in llama-cpp-python; we stop after `new` tokens (EOS ignored, like stop_at_eos=False)
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
            tokens.append(int(token))
            if len(tokens) == 1:
                first = time.perf_counter()
            if len(tokens) >= new:
                break
        end = time.perf_counter()
        prefill_s, decode_s = first - start, end - first
        return tokens, len(ids) / prefill_s, (len(tokens) - 1) / decode_s if decode_s > 0 else 0.0

    out, _, _ = generate()  # warm-up: one untimed generation
    prefill, decode = [], []
    for _ in range(int(job["runs"])):
        _, p, d = generate()
        prefill.append(p)
        decode.append(d)
    return _measurement(prefill, decode, load_s, rss_base, rss_load, job["gguf"], out)


def run_job(job: dict) -> dict:
    kind = job.get("kind")
    if kind == "session":
        return measure_session(job)
    if kind == "llama_cpp":
        return measure_llama_cpp(job)
    if kind == "ort_genai":
        from otaro_export.bench.ort_genai import measure

        return measure(job)
    if kind == "switch":
        from otaro_export.bench.switching import measure_switching

        return measure_switching(job)
    raise ValueError(f"unknown benchmark job kind {kind!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m otaro_export.bench.worker '<json job>'", file=sys.stderr)
        return 2
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    result = run_job(json.loads(argv[0]))
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
