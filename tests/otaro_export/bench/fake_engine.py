"""A fake benchmark engine for the interleaving tests: ``{"kind": "engine", "engine": "fake_engine:FakeEngine"}``.

It loads nothing and "decodes" by sleeping. Every generate call appends
``name new_tokens start end`` to ``job["log"]`` (one small O_APPEND write, so
lines of concurrent workers never mix), which lets a test see who ran when.
Job fields: ``name``, ``log``, ``decode`` (tok/s of each timed run, by index),
``sleep_s``, ``fail_load`` (raise while loading), ``crash_at`` (timed run
index at which the process kills itself with SIGSEGV), ``hang_at`` (timed run
index at which it sleeps for an hour).
"""

from __future__ import annotations

import os
import signal
import time

from otaro_export.bench.worker import Engine


class FakeEngine(Engine):
    def __init__(self, job: dict) -> None:
        if job.get("fail_load"):
            raise RuntimeError(f"fake load failure of {job['name']}")
        self.job = job
        self.calls = 0  # call 0 is the warm-up
        self.timed = 0
        self.mapped_file = None

    def generate(self, new_tokens: int) -> tuple[list[int], float, float]:
        job = self.job
        timed = self.calls > 0 and new_tokens == int(job["new_tokens"])
        if timed and job.get("crash_at") == self.timed:
            os.kill(os.getpid(), signal.SIGSEGV)
        if timed and job.get("hang_at") == self.timed:
            time.sleep(3600)
        start = time.monotonic()
        time.sleep(float(job.get("sleep_s", 0.0)))
        end = time.monotonic()
        fd = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{job['name']} {new_tokens} {start:.6f} {end:.6f}\n".encode())
        finally:
            os.close(fd)
        self.calls += 1
        decode = 1.0
        if timed:
            decode = float(job["decode"][self.timed])
            self.timed += 1
        return list(range(new_tokens)), 2.0 * decode, decode
