"""Does changing precision between calls cost anything?

One loaded session decodes the same positions with the same input tokens
under three schedules: every step at ``low`` bits, every step at ``high``
bits, and alternating ``low, high, low, ...`` (a switch on EVERY call). For
each precision k in {low, high} the ratio is

    median(step time at k in the alternating schedule) / median(step time in the fixed-k schedule)

and the reported ``switch_ratio`` is the geometric mean of the two: 1.0 means
switching is free. Schedules are interleaved over several rounds so a change
in machine load hits all three alike; ``noise`` (the spread of per-round
medians of one fixed schedule) says how large a difference this machine can
resolve. Step times exclude prefill.
"""

from __future__ import annotations

import math
import statistics
import time

import numpy as np


def _decode_steps(session, prompt: np.ndarray, feed: list[int], schedule: list[int]) -> list[float]:
    """Reset, prefill at the schedule's first precision, then time one step per entry of ``schedule``."""
    session._reset()
    session._step(prompt, 0, schedule[0])
    pos = prompt.shape[1]
    times = []
    for token, bits in zip(feed, schedule):
        ids = np.asarray([[token]], dtype=np.int64)
        t0 = time.perf_counter()
        session._step(ids, pos, bits)
        times.append(time.perf_counter() - t0)
        pos += 1
    return times


def round_noise(fixed_rounds: dict[int, list[list[float]]]) -> float:
    """Run-to-run noise: the largest relative spread of per-round median step times of one fixed schedule."""
    spreads = [0.0]
    for rounds in fixed_rounds.values():
        medians = [statistics.median(r) for r in rounds if r]
        if len(medians) > 1:
            spreads.append(max(medians) / min(medians) - 1)
    return max(spreads)


def switch_ratios(
    fixed: dict[int, list[float]], alternating: list[tuple[int, float]], noise: float | None = None
) -> dict:
    """Per-precision and overall ratios (alternating / fixed) of median step times (+ the noise, if given)."""
    per_bits = {}
    for bits, times in fixed.items():
        alt = [t for b, t in alternating if b == bits]
        if not times or not alt:
            raise ValueError(f"no step times for E5M{bits}")
        per_bits[bits] = statistics.median(alt) / statistics.median(times)
    overall = math.exp(sum(math.log(r) for r in per_bits.values()) / len(per_bits))
    return {
        "switch_ratio": overall,
        "noise": noise,
        "per_bits_ratio": {str(b): r for b, r in per_bits.items()},
        "fixed_step_ms": {str(b): 1e3 * statistics.median(t) for b, t in fixed.items()},
        "alternating_step_ms": {
            str(b): 1e3 * statistics.median([t for bb, t in alternating if bb == b]) for b in fixed
        },
    }


def measure_switching(job: dict) -> dict:
    from otaro_export.runtime import load

    session = load(job["directory"], num_threads=int(job["threads"]))
    low, high = int(job.get("low", 3)), int(job.get("high", 8))
    steps, rounds = int(job["steps"]), int(job["rounds"])
    prompt = np.asarray([job["prompt_ids"]], dtype=np.int64)
    if prompt.shape[1] + steps > session.max_seq_len:
        raise ValueError(f"{prompt.shape[1]} prompt tokens + {steps} steps exceed max_seq_len {session.max_seq_len}")
    # the same (arbitrary, in-vocabulary) tokens for every schedule: cost does not depend on them
    feed = [int(job["prompt_ids"][i % prompt.shape[1]]) for i in range(steps)]
    alt_schedule = [low if i % 2 == 0 else high for i in range(steps)]
    fixed: dict[int, list[float]] = {low: [], high: []}
    alternating: list[tuple[int, float]] = []
    _decode_steps(session, prompt, feed, alt_schedule)  # warm-up: every plane paged in
    fixed_rounds: dict[int, list[list[float]]] = {low: [], high: []}
    for _ in range(rounds):
        for bits in (low, high):
            fixed_rounds[bits].append(_decode_steps(session, prompt, feed, [bits] * steps))
            fixed[bits] += fixed_rounds[bits][-1]
        alternating += list(zip(alt_schedule, _decode_steps(session, prompt, feed, alt_schedule)))
    return {
        **switch_ratios(fixed, alternating, round_noise(fixed_rounds)),
        "steps": steps,
        "rounds": rounds,
        "low": low,
        "high": high,
    }
