"""Interleaved rounds of persistent workers (:mod:`otaro_export.bench.interleave`), with fake engines.

The workers are real ``worker --serve`` processes; their engine is
``fake_engine.FakeEngine`` (sleeps instead of decoding), so these tests take
seconds and exercise the protocol, the schedule, pausing and failures.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest

from otaro_export.bench.interleave import DecodeJob, measure_interleaved, round_orders

HERE = Path(__file__).resolve().parent


def _env(threads: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env


def _jobs(log: Path, rounds: int, names=("a", "b", "c"), **per_name) -> list[DecodeJob]:
    jobs = []
    for i, name in enumerate(names):
        job = {
            "kind": "engine",
            "engine": "fake_engine:FakeEngine",
            "name": name,
            "log": str(log),
            "new_tokens": 8,
            "rewarm_tokens": 2,
            "sleep_s": 0.02,
            "decode": [10.0 * (i + 1) + r for r in range(rounds)],
            **per_name.get(name, {}),
        }
        jobs.append(DecodeJob(name, job, 1))
    return jobs


def _calls(log: Path) -> list[tuple[str, int, float, float]]:
    rows = []
    for line in log.read_text().splitlines():
        name, tokens, start, end = line.split()
        rows.append((name, int(tokens), float(start), float(end)))
    return rows


def _neighbour_pairs(orders: list[list[int]]) -> list[tuple[int, int]]:
    """Every (a, b) with b timed right after a, across round boundaries too."""
    flat = [c for order in orders for c in order]
    return list(zip(flat, flat[1:]))


def test_round_orders_rotate_and_vary_neighbours():
    for count, rounds in ((9, 5), (17, 5), (9, 2), (6, 3)):
        for seed in range(3):
            orders = round_orders(count, rounds, seed)
            assert all(sorted(o) == list(range(count)) for o in orders)
            assert [o[0] for o in orders] == [r % count for r in range(rounds)]  # each first in turn
            pairs = _neighbour_pairs(orders)
            assert all(a != b for a, b in pairs)  # none runs twice in a row
            assert len(set(pairs)) == len(pairs)  # nobody keeps a neighbour
    many = round_orders(5, 10, seed=3)  # more rounds than configurations: pairs must repeat, runs not
    assert [o[0] for o in many] == [r % 5 for r in range(10)]
    assert all(a != b for a, b in _neighbour_pairs(many))
    assert round_orders(5, 10, seed=3) == many  # recorded schedules are reproducible
    assert round_orders(5, 10, seed=4) != many
    assert round_orders(1, 3) == [[0], [0], [0]]
    assert round_orders(0, 2) == [[], []]


def test_rounds_run_one_worker_at_a_time_in_the_recorded_order(tmp_path):
    log = tmp_path / "calls.log"
    rounds = 3
    idle_states: list[set[str]] = []

    def on_round(r: int) -> None:  # between rounds every worker waits, stopped
        children = psutil.Process().children()
        idle_states.append({c.status() for c in children})

    run = measure_interleaved(
        _jobs(log, rounds), rounds, _env, timeout_s=60, log=lambda _: None, on_round=on_round, seed=1
    )
    assert run.failures == []
    expected = [[["a", "b", "c"][i] for i in order] for order in round_orders(3, rounds, seed=1)]
    assert run.orders == expected
    for i, name in enumerate("abc"):
        r = run.results[name]
        assert r["decode_tok_s_runs"] == [10.0 * (i + 1) + k for k in range(rounds)]
        assert r["prefill_tok_s_runs"] == [2 * x for x in r["decode_tok_s_runs"]]
        assert r["decode_tok_s"] == 10.0 * (i + 1) + 1  # median over rounds
        assert r["schedule"] == "interleaved"
        assert r["round_positions"] == [order.index(name) for order in run.orders]
        assert r["idle_cpu_s"] >= 0

    calls = [c for c in _calls(log)]
    timed = [c for c in calls if c[1] == 8]
    warmups = timed[:3]  # the warm-up (full length) of each worker while loading, in job order
    assert [c[0] for c in warmups] == ["a", "b", "c"]
    timed = timed[3:]
    assert [c[0] for c in timed] == [name for order in run.orders for name in order]
    after_load = calls[3:]
    for before, after in zip(after_load, after_load[1:]):
        assert before[3] <= after[2]  # no two workers ever run at the same time
    for i, call in enumerate(after_load):
        if call[1] == 8:  # every timed run right after its own untimed re-warm
            assert after_load[i - 1][:2] == (call[0], 2)
    if hasattr(signal, "SIGSTOP"):
        assert idle_states and all(states == {psutil.STATUS_STOPPED} for states in idle_states)
    assert psutil.Process().children() == []  # every worker exited


def test_a_worker_that_crashes_mid_run_is_reported_and_the_others_continue(tmp_path):
    log = tmp_path / "calls.log"
    jobs = _jobs(log, 3, b={"crash_at": 1}, c={"fail_load": True})
    lines: list[str] = []
    run = measure_interleaved(jobs, 3, _env, timeout_s=60, log=lines.append)
    failures = dict(run.failures)
    assert set(failures) == {"b", "c"}
    assert "crashed in round 2 of 3 (1 timed runs done)" in failures["b"]
    assert "killed by signal SIGSEGV" in failures["b"]
    assert "fake load failure of c" in failures["c"] and "loading" in failures["c"]
    assert set(run.results) == {"a"} and len(run.results["a"]["decode_tok_s_runs"]) == 3
    assert [o.count("b") for o in run.orders] == [1, 0, 0]  # dropped after its crash
    assert any("FAILED b" in line for line in lines)
    assert psutil.Process().children() == []


def test_a_hung_worker_times_out(tmp_path):
    log = tmp_path / "calls.log"
    run = measure_interleaved(_jobs(log, 2, names=("a", "b"), a={"hang_at": 0}), 2, _env, 4, log=lambda _: None)
    assert [name for name, _ in run.failures] == ["a"] and "timed out after 4s" in run.failures[0][1]
    assert len(run.results["b"]["decode_tok_s_runs"]) == 2
    assert psutil.Process().children() == []


def test_duplicate_names_are_refused(tmp_path):
    jobs = _jobs(tmp_path / "log", 1, names=("a", "a"))
    with pytest.raises(ValueError, match="duplicate"):
        measure_interleaved(jobs, 1, _env, 10, log=lambda _: None)


_PARENT = r"""
import json, subprocess, sys, time
cmd = [sys.executable, "-m", "otaro_export.bench.worker", "--serve", sys.argv[1]]
worker = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
worker.stdout.readline()  # loaded
print(worker.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not os.sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_a_stopped_worker_dies_with_a_killed_bench(tmp_path):
    """A bench killed outright (no cleanup runs) must not leave stopped workers holding their models."""
    import subprocess
    import sys
    import time

    job = _jobs(tmp_path / "calls.log", 1, names=("a",))[0].job
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, __import__("json").dumps(job)], stdout=subprocess.PIPE, env=_env(1)
    )
    try:
        pid = int(parent.stdout.readline())
        os.kill(pid, signal.SIGSTOP)  # idle workers are stopped between their runs
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the stopped worker outlived the bench process")
    finally:
        parent.kill()
