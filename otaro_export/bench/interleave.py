"""Interleaved decode measurement: every configuration loaded once, timed in rounds.

On a shared machine the load drifts over minutes, so rows measured minutes
apart are not comparable (one unchanged row measured 92 and 153 tok/s in two
runs fifteen minutes apart). Instead, every configuration gets its own
persistent worker process (``worker --serve``: loaded and warmed up once), and
the coordinator runs R rounds; in each round it asks every worker, one after
another, for ONE timed generation. A slow stretch of the machine then hits one
round of every configuration, not all runs of one, and a ratio computed within
a round (paired) cancels it: :func:`otaro_export.bench.report.paired_ratio`.

* One worker runs at a time. The others wait in a blocking read of their stdin
  and, where the platform has SIGSTOP, are also stopped, so a thread pool that
  naps and spins while idle (ours spins 1 ms every nap) takes no CPU from the
  one being timed. ``idle_cpu_s`` in each result says what an idle worker used.
* Each round's order is seeded-random with its first configuration rotating
  (:func:`round_orders`): no configuration is always first or keeps its
  neighbour, and none runs twice in a row across a round boundary.
* Every timed run follows an untimed short generation in the same worker
  (``rewarm_tokens``): thread pools are awake and the weights as warm as in
  back-to-back runs; what interleaving removes is the drift, not the warm-up.
* A worker that fails to start, crashes or times out is reported as failed
  (with its stderr tail) and dropped; the others continue. Its partial runs are
  not reported, since they would not cover the same rounds as the other rows.
* Every worker holds its model for the whole measurement: the sum of their
  resident sets is recorded (``resident_total_mib``); a worker is not started
  when less than ``min_available_mib`` of memory is available.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from otaro_export.bench.worker import READY_PREFIX, RESULT_PREFIX, RUN_PREFIX
from otaro_export.errors import OtaroError

#: do not start another worker below this much available memory (each holds its model until the end)
MIN_AVAILABLE_MIB = 1024.0
#: seconds a worker gets to answer "finish" (memory readings) and to exit
FINISH_TIMEOUT_S = 120.0


class JobFailed(OtaroError):
    """A benchmark child process failed; the message carries its error output."""


def exit_message(returncode: int, tail: str) -> str:
    """``killed by signal X`` / ``exit code N``, with the last lines the process wrote."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        return f"killed by signal {name}: {tail}"
    return f"exit code {returncode}: {tail}"


#: costs of a candidate order in :func:`round_orders`, in priority order
_BACK_TO_BACK, _REPEATED_PAIR, _REPEATED_POSITION = 10**6, 100, 1


def _step_cost(c: int, order: list[int], remaining: list[int], following, pairs: set, positions: list[set]) -> int:
    """What appending ``c`` to the partial ``order`` costs (see :func:`round_orders`)."""
    cost = _REPEATED_PAIR * ((order[-1], c) in pairs) + _REPEATED_POSITION * (len(order) in positions[c])
    if len(remaining) == 2 and following in remaining and c != following:
        cost += _BACK_TO_BACK  # would leave the next round's first configuration last
    return cost


def round_orders(count: int, rounds: int, seed: int = 0, attempts: int = 200) -> list[list[int]]:
    """Per round, an order of ``range(count)``; round r starts with r % count, so each is first in turn.

    The rest of each round is built greedily at random (seeded; the best of ``attempts``)
    to avoid, in this priority: running one configuration twice in a row across a round
    boundary (possible when ``count > 2``); an ordered neighbour pair (a right before b)
    that an earlier round already had, boundary pairs included; a position a configuration
    already had. For rounds well below ``count`` (5 rounds, 9 or 17 configurations) no
    pair repeats, so no configuration keeps its neighbour.
    """
    if count < 1:
        return [[] for _ in range(rounds)]
    rng = random.Random(seed)
    orders: list[list[int]] = []
    pairs: set[tuple[int, int]] = set()
    positions: list[set[int]] = [set() for _ in range(count)]
    for r in range(rounds):
        first = r % count
        following = (r + 1) % count if r + 1 < rounds and count > 2 else None  # next round's first
        best: tuple[int, list[int]] | None = None
        for _ in range(attempts):
            order, cost = [first], 0
            remaining = [c for c in range(count) if c != first]
            while remaining:
                costs = {c: _step_cost(c, order, remaining, following, pairs, positions) for c in remaining}
                low = min(costs.values())
                pick = rng.choice([c for c in remaining if costs[c] == low])
                order.append(pick)
                remaining.remove(pick)
                cost += low
            if following is not None and (order[-1], following) in pairs:
                cost += _REPEATED_PAIR
            if best is None or cost < best[0]:
                best = (cost, order)
            if cost == 0:
                break
        order = best[1]
        if orders:
            pairs.add((orders[-1][-1], order[0]))
        pairs.update(zip(order, order[1:]))
        for i, c in enumerate(order):
            positions[c].add(i)
        orders.append(order)
    return orders


def _cpu_s(pid: int) -> float | None:
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # gone, or no psutil: a diagnostic only
        return None


def _rss_mib(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except Exception:
        return None


def available_mib() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().available / 2**20
    except Exception:
        return None


class PersistentWorker:
    """One ``worker --serve`` process: start (load + warm-up), timed runs on request, finish."""

    def __init__(self, name: str, job: dict, env: dict, timeout_s: float, pause_idle: bool = True) -> None:
        self.name, self.timeout_s = name, timeout_s
        self.pause_idle = pause_idle and hasattr(signal, "SIGSTOP")
        self._stderr = tempfile.TemporaryFile()  # a file, not a pipe: a chatty engine cannot block on it
        cmd = [sys.executable, "-m", "otaro_export.bench.worker", "--serve", json.dumps(job)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        self._buffer = b""
        self._paused = False
        self.idle_cpu_s = 0.0
        self._cpu_after_run: float | None = None
        try:
            self.ready = self._read(READY_PREFIX, timeout_s, "loading")
        except BaseException:
            self.kill()
            self.close()
            raise

    def _tail(self) -> str:
        try:
            self._stderr.seek(0)
            text = self._stderr.read().decode("utf-8", errors="replace")
        except (OSError, ValueError):
            return ""
        return "\n".join(text.strip().splitlines()[-6:])

    def _failed(self, what: str) -> JobFailed:
        try:
            returncode = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
            returncode = self.proc.returncode
        return JobFailed(f"{what}: {exit_message(returncode, self._tail())}")

    def _read(self, prefix: str, timeout_s: float, what: str) -> dict:
        deadline = time.monotonic() + timeout_s
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                text = line.decode("utf-8", errors="replace")
                if text.startswith(prefix):
                    return json.loads(text[len(prefix) :])
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise JobFailed(f"{what}: timed out after {timeout_s:.0f}s: {self._tail()}")
            readable, _, _ = select.select([fd], [], [], remaining)
            if not readable:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:  # EOF: the worker exited
                raise self._failed(what)
            self._buffer += chunk

    def _send(self, cmd: str, what: str) -> None:
        try:
            self.proc.stdin.write((json.dumps({"cmd": cmd}) + "\n").encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise self._failed(what) from exc

    def _signal(self, sig: int) -> None:
        try:
            self.proc.send_signal(sig)
        except (ProcessLookupError, OSError):
            pass  # already gone: the next read reports how it ended

    def pause(self) -> None:
        if self.pause_idle and not self._paused and self.proc.poll() is None:
            self._signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            self._signal(signal.SIGCONT)
            self._paused = False

    def run(self, what: str) -> dict:
        """One timed generation (the worker does its untimed re-warm first)."""
        self.resume()
        cpu = _cpu_s(self.proc.pid)
        if cpu is not None and self._cpu_after_run is not None:
            self.idle_cpu_s += max(cpu - self._cpu_after_run, 0.0)
        self._send("run", what)
        result = self._read(RUN_PREFIX, self.timeout_s, what)
        self._cpu_after_run = _cpu_s(self.proc.pid)
        return result

    def finish(self) -> dict:
        self.resume()
        self._send("finish", "finishing")
        result = self._read(RESULT_PREFIX, FINISH_TIMEOUT_S, "finishing")
        try:
            self.proc.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
        self.close()
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL also ends a stopped process
            self.proc.wait()
        self._paused = False

    def close(self) -> None:
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self._stderr.close()


@dataclass
class DecodeJob:
    """One configuration to time: a unique ``name`` (progress, order, failures), its worker job, its threads."""

    name: str
    job: dict
    threads: int


@dataclass
class InterleavedRun:
    #: name -> the worker's result: medians, per-round lists (index = round), memory, plus schedule fields
    results: dict[str, dict] = field(default_factory=dict)
    #: (name, error message) of every worker that failed to start, crashed or timed out
    failures: list[tuple[str, str]] = field(default_factory=list)
    #: per round, the names in the order they ran (workers that had failed by then left out)
    orders: list[list[str]] = field(default_factory=list)
    #: sum of the workers' resident sets once all were loaded, MiB
    resident_total_mib: float | None = None


def measure_interleaved(
    jobs: list[DecodeJob],
    rounds: int,
    env_for: Callable[[int], dict],
    timeout_s: float,
    log: Callable[[str], None] = print,
    on_round: Callable[[int], None] | None = None,
    seed: int = 0,
    pause_idle: bool = True,
    min_available_mib: float = MIN_AVAILABLE_MIB,
) -> InterleavedRun:
    """Start every job's worker (one at a time), then ``rounds`` rounds of one timed run each, then finish all.

    ``env_for(threads)`` is a worker's environment; ``on_round(r)`` runs before round r (e.g. a load sample).
    """
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate configuration names: {names}")
    run = InterleavedRun()
    if not jobs:
        return run
    workers: dict[str, PersistentWorker] = {}
    runs: dict[str, list[dict]] = {}
    positions: dict[str, list[int]] = {}
    try:
        log(f"loading {len(jobs)} configurations, one process each (loaded once, timed in interleaved rounds) ...")
        for j in jobs:
            free = available_mib()
            if free is not None and free < min_available_mib:
                message = (
                    f"not started: {free:.0f} MiB of memory available with {len(workers)} workers loaded, "
                    f"below {min_available_mib:.0f} MiB (every worker holds its model; measure fewer --bits or --targets)"
                )
                log(f"  FAILED {j.name}: {message}")
                run.failures.append((j.name, message))
                continue
            try:
                worker = PersistentWorker(j.name, j.job, env_for(j.threads), timeout_s, pause_idle)
            except (JobFailed, OSError) as exc:
                log(f"  FAILED {j.name}: {exc}")
                run.failures.append((j.name, str(exc)))
                continue
            worker.pause()
            workers[j.name] = worker
            runs[j.name], positions[j.name] = [], []
            log(f"  {j.name}: loaded in {worker.ready.get('load_s', float('nan')):.1f}s")
        rss = [_rss_mib(w.proc.pid) for w in workers.values()]
        if rss and all(r is not None for r in rss):
            run.resident_total_mib = round(sum(rss), 1)
            log(f"  {len(workers)} workers resident: {run.resident_total_mib:.0f} MiB together")

        for r, order in enumerate(round_orders(len(jobs), rounds, seed)):
            if on_round is not None:
                on_round(r)
            ran: list[str] = []
            speeds: list[str] = []
            for index in order:
                name = jobs[index].name
                worker = workers.get(name)
                if worker is None:
                    continue  # failed earlier
                try:
                    result = worker.run(f"round {r + 1}")
                except (JobFailed, OSError) as exc:
                    message = f"crashed in round {r + 1} of {rounds} ({len(runs[name])} timed runs done): {exc}"
                    log(f"  FAILED {name}: {message}")
                    run.failures.append((name, message))
                    worker.kill()
                    worker.close()
                    del workers[name]
                    continue
                worker.pause()
                positions[name].append(len(ran))
                ran.append(name)
                runs[name].append(result)
                speeds.append(f"{name} {result['decode_tok_s']:.1f}")
            run.orders.append(ran)
            log(f"round {r + 1}/{rounds} (decode tok/s, in run order): " + ", ".join(speeds))

        for name in list(workers):
            worker = workers.pop(name)
            try:
                result = worker.finish()
            except (JobFailed, OSError) as exc:
                log(f"  FAILED {name}: {exc}")
                run.failures.append((name, str(exc)))
                worker.kill()
                worker.close()
                continue
            prefill = [x["prefill_tok_s"] for x in runs[name]]
            decode = [x["decode_tok_s"] for x in runs[name]]
            if result.get("decode_tok_s_runs") != decode:  # the coordinator's record and the worker's must agree
                run.failures.append((name, "the worker's runs differ from the coordinator's record"))
                continue
            run.results[name] = {
                **result,
                "prefill_tok_s_runs": prefill,
                "decode_tok_s_runs": decode,
                "schedule": "interleaved",
                "round_positions": positions[name],
                "idle_cpu_s": round(worker.idle_cpu_s, 3),
            }
    finally:
        for worker in workers.values():  # an exception (or Ctrl-C) above: no worker outlives the coordinator
            worker.kill()
            worker.close()
    return run
