"""The demo session: load ONE artifact once, run a task script with a precision per task.

Each task reports the precision it ran at, its latency, its tokens/s and the
process's resident memory; the session report shows one load and one session
object for the whole script, which is the product's promise: precision is a
per-call input, switching it reloads nothing and copies no weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from otaro_export import process_memory
from otaro_export.demo.policy import Policy, precision_name
from otaro_export.demo.tasks import Task
from otaro_export.demo.toml_io import DemoConfigError
from otaro_export.process_memory import format_mib


@dataclass
class TaskResult:
    name: str
    kind: str
    bits: int
    latency_s: float
    #: tokens through the model: choose = prompt+option tokens scored, generate = new tokens
    tokens: int
    rss_bytes: int | None
    session_id: int
    answer: str
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.latency_s if self.latency_s > 0 else 0.0


@dataclass
class DemoReport:
    artifact: str
    target: str
    loads: int
    load_s: float
    session_id: int
    session_type: str
    rss_before_load: int | None
    rss_after_load: int | None
    results: list[TaskResult] = field(default_factory=list)

    @property
    def precisions_used(self) -> list[int]:
        return sorted({r.bits for r in self.results})

    @property
    def single_session(self) -> bool:
        return all(r.session_id == self.session_id for r in self.results)

    def to_dict(self) -> dict:
        d = asdict(self)
        for r, rd in zip(self.results, d["results"]):
            rd["precision"] = precision_name(r.bits)
            rd["tokens_per_s"] = r.tokens_per_s
        d["precisions_used"] = [precision_name(b) for b in self.precisions_used]
        d["single_session"] = self.single_session
        return d


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def choice_ids(session, task: Task) -> tuple[list[int], list[list[int]]]:
    """``(context ids, ids of each option)`` of a ``choose`` task: the chat-formatted prompt plus the
    answer prefix, then each option as the reply's continuation (after a prefix, with the space that
    separates it from the prefix's last word). The mobile bundle ships exactly these ids."""
    tokenize = session.tokenizer
    context = session.encode_prompt(task.prompt, chat=True)
    lead = ""
    if task.answer_prefix:
        context = context + list(tokenize(task.answer_prefix, add_special_tokens=False)["input_ids"])
        lead = " "
    options = [list(tokenize(lead + o, add_special_tokens=False)["input_ids"]) for o in task.options]
    return context, options


def score_options(session, task: Task, bits: int) -> tuple[str, dict[str, float], int]:
    """Mean log-likelihood of each option after the chat-formatted prompt and answer prefix, one
    forward per option.

    Mean rather than sum so that longer options are not penalised for their length.
    Returns (best option, scores, tokens run through the model).
    """
    context, options = choice_ids(session, task)
    scores: dict[str, float] = {}
    tokens = 0
    for option, option_ids in zip(task.options, options):
        ids = context + option_ids
        logits = session.forward(np.asarray([ids], dtype=np.int64), bits)
        # logits at position i predict token i+1: the option's tokens start at len(context).
        logp = _log_softmax(logits[0, len(context) - 1 : len(ids) - 1].astype(np.float64))
        scores[option] = float(logp[np.arange(len(option_ids)), option_ids].mean())
        tokens += len(ids)
    best = max(task.options, key=lambda o: scores[o])  # ties: the first listed option wins
    return best, scores, tokens


def check_fits(session, tasks: list[Task]) -> None:
    """Every task must fit the artifact's context window: fail before running anything."""
    limit = session.max_seq_len
    for task in tasks:
        if task.kind == "choose":
            context, options = choice_ids(session, task)
            need = len(context) + max(len(o) for o in options)
        else:
            need = len(session.encode_prompt(task.prompt, chat=True)) + 1
        if need > limit:
            raise DemoConfigError(
                f"task '{task.name}' needs {need} positions but this artifact's max_seq_len is {limit}: "
                f"shorten the prompt or re-export with a larger --max-seq-len"
            )


def check_precisions(session, plan: list[tuple[Task, int]]) -> None:
    served = session.precisions
    for task, bits in plan:
        if bits not in served:
            raise DemoConfigError(
                f"the policy runs task '{task.name}' at {precision_name(bits)}, but this artifact serves "
                f"{', '.join(precision_name(b) for b in served)}"
            )


def run_task(session, task: Task, bits: int) -> TaskResult:
    t0 = time.perf_counter()
    if task.kind == "choose":
        answer, scores, tokens = score_options(session, task, bits)
    else:
        answer = session.generate(task.prompt, bits=bits, max_new_tokens=task.max_new_tokens, chat=True)
        scores, tokens = {}, session.last_stats.new_tokens
    latency = time.perf_counter() - t0
    return TaskResult(
        name=task.name,
        kind=task.kind,
        bits=bits,
        latency_s=latency,
        tokens=tokens,
        rss_bytes=process_memory.rss_bytes(),
        session_id=id(session),
        answer=answer,
        scores=scores,
    )


def _default_loader(path):
    from otaro_export import runtime

    return runtime.load(path)


def _one_line(text: str, width: int = 100) -> str:
    """One printable line: newlines shown as a return symbol, control characters escaped."""
    flat = text.replace("\r", " ").replace("\n", " \u23ce ").strip()
    flat = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in flat)
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def _task_line(i: int, n: int, r: TaskResult) -> str:
    return (
        f"[{i}/{n}] {r.name:<14} {r.kind:<8} {precision_name(r.bits)}  "
        f"{r.latency_s * 1e3:9.1f} ms  {r.tokens_per_s:8.1f} tok/s  "
        f"RSS {format_mib(r.rss_bytes):>7} MiB  session 0x{r.session_id:x}"
    )


def _header_lines(report: DemoReport, session, policy: Policy, plan) -> list[str]:
    served = ", ".join(precision_name(b) for b in session.precisions)
    return [
        f"artifact  {report.artifact} ({report.target}, {session.manifest.kernels} kernels, serves {served})",
        f"load      {report.loads} load in {report.load_s:.2f} s -> {report.session_type} session "
        f"0x{report.session_id:x}; RSS {format_mib(report.rss_before_load)} -> {format_mib(report.rss_after_load)} MiB",
        f"policy    {policy.source}: " + ", ".join(f"{t.name}={precision_name(b)}" for t, b in plan),
        "",
    ]


def _result_lines(i: int, n: int, r: TaskResult) -> list[str]:
    if r.scores:
        ranked = ", ".join(f"{o} {s:.2f}" for o, s in sorted(r.scores.items(), key=lambda kv: -kv[1]))
        answer = f"{r.answer}   (mean log-prob: {ranked})"
    else:
        answer = _one_line(r.answer) or "(empty: the model stopped at once)"
    return [_task_line(i, n, r), f"        -> {answer}"]


def _summary_lines(report: DemoReport) -> list[str]:
    last_rss = report.results[-1].rss_bytes if report.results else None
    growth = (
        "n/a"
        if last_rss is None or report.rss_after_load is None
        else f"{(last_rss - report.rss_after_load) / 2**20:+.1f} MiB"
    )
    return [
        "",
        f"summary   {len(report.results)} tasks at {', '.join(precision_name(b) for b in report.precisions_used)}; "
        f"{report.loads} load; same session object for every task: {'yes' if report.single_session else 'NO'} "
        f"(0x{report.session_id:x}); RSS change since load {growth}",
        "tok/s     choose = prompt+option tokens scored per second; "
        "generate = new tokens per second (prefill included)",
    ]


def run_demo(
    artifact: str | Path,
    policy: Policy,
    tasks: list[Task],
    echo: Callable[[str], None] = print,
    loader: Callable[[str | Path], object] | None = None,
) -> DemoReport:
    """Plan (policy x tasks), load the artifact once, run every task at its precision, report."""
    plan = policy.plan(tasks)  # config errors surface before the (slow) load
    load = loader or _default_loader
    rss_before = process_memory.rss_bytes()
    t0 = time.perf_counter()
    session = load(artifact)  # the one and only load: every task below reuses `session`
    report = DemoReport(
        artifact=str(artifact),
        target=session.manifest.target,
        loads=1,
        load_s=time.perf_counter() - t0,
        session_id=id(session),
        session_type=type(session).__name__,
        rss_before_load=rss_before,
        rss_after_load=process_memory.rss_bytes(),
    )
    if session.tokenizer is None:
        raise DemoConfigError(f"{artifact}: the export has no tokenizer, which the demo's text tasks need")
    check_precisions(session, plan)
    check_fits(session, tasks)

    for line in _header_lines(report, session, policy, plan):
        echo(line)
    for i, (task, bits) in enumerate(plan, 1):
        result = run_task(session, task, bits)
        report.results.append(result)
        for line in _result_lines(i, len(plan), result):
            echo(line)
    for line in _summary_lines(report):
        echo(line)
    return report
