"""Benchmark results -> ratios, goal verdicts, the printed table, JSON and PNG plots.

Pure functions of measured numbers (no timing here), so they are unit-tested.
Every ratio compares rows of ONE run: ``x anchor`` divides by the fastest
anchor row (llama.cpp at the bench's threads or at 1 thread, onnxruntime-genai
int4: what a user would pick instead of us), ``x fp32`` by the fp32 export of
the SAME runtime (ONNX rows by ONNX fp32, ExecuTorch rows by ExecuTorch fp32).

Rows measured in interleaved rounds (``extra["schedule"] == "interleaved"``,
see :mod:`.interleave`) are paired: run i of every such row was taken in round
i, minutes apart from round i+1 but seconds apart from the other rows' run i.
Their ratios are computed within each round and summarized by the median over
rounds (:func:`paired_ratio`), so load drift between rounds cancels; rows
without rounds (an older bench.json, the sequential portable rows) fall back
to the ratio of medians.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

LLAMA_CPP = "llama.cpp"
ORT_GENAI = "onnxruntime-genai"
FP32 = "fp32"
#: runtimes of the rows we compare against: what a user would pick instead of us
ANCHOR_RUNTIMES = (LLAMA_CPP, "llama.cpp-1thread", ORT_GENAI)

#: goal thresholds from the issues (ratios from the same run)
GOAL_ONNX_E5M3_VS_ANCHOR = 1.3
GOAL_PTE_E5M3_VS_ANCHOR = 1.0
GOAL_E5M3_VS_E5M8 = 1.6
GOAL_PTE_E5M8_VS_FP32 = 1.2
GOAL_ARTIFACT_MIB = 140.0
GOAL_E5M3_RESIDENT_VS_FP16 = 0.31
#: "costs nothing measurable": alternating precision every call at most 5% (or the measured
#: run-to-run noise, if larger) slower than fixed precision
GOAL_SWITCH_TOLERANCE = 0.05
#: issue 14: wall time of the bench's export of each ExecuTorch artifact (artifact name -> seconds)
GOAL_EXPORT_S = {"executorch-sefp-fused": 180.0, "executorch-sefp-portable": 600.0}


@dataclass
class SpeedResult:
    """One measured configuration (one fresh process)."""

    config: str  # e.g. "onnx fused", "executorch portable", "onnx fp32", "llama.cpp"
    runtime: str  # "onnx" | "executorch" | "llama.cpp"
    precision: str  # "E5M3".."E5M8" | "fp32" | "Q4_1"
    bits: int | None
    decode_tok_s: float
    prefill_tok_s: float
    peak_rss_mib: float
    artifact_mib: float
    new_tokens: int
    runs: int
    extra: dict = field(default_factory=dict)


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: could not be measured in this run
    detail: str = ""
    #: the per-round (paired) ratio behind ``measured``: median, min, max, rounds, per_round; None if unpaired
    paired: dict | None = None


def _find(results: list[SpeedResult], runtime: str, precision: str, config: str | None = None) -> SpeedResult | None:
    for r in results:
        if r.runtime == runtime and r.precision == precision and (config is None or r.config == config):
            return r
    return None


def anchor_rows(results: list[SpeedResult]) -> list[SpeedResult]:
    return [r for r in results if r.runtime in ANCHOR_RUNTIMES]


def best_anchor(results: list[SpeedResult], key: str = "decode_tok_s") -> SpeedResult | None:
    """The fastest anchor by ``key``: beating a baseline that collapsed (spinning threads on shared cores)
    proves nothing, so every verdict is against the best of them."""
    anchors = anchor_rows(results)
    return max(anchors, key=lambda r: getattr(r, key)) if anchors else None


def fp32_row(results: list[SpeedResult], runtime: str) -> SpeedResult | None:
    return _find(results, runtime, FP32)


def first_token_ms(r: SpeedResult, prompt_tokens: int) -> float | None:
    """Prompt processing time to the first new token (``prefill_tok_s`` counts prompt tokens per second)."""
    return 1000.0 * prompt_tokens / r.prefill_tok_s if r.prefill_tok_s else None


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def round_values(r: SpeedResult, key: str = "decode_tok_s") -> list[float] | None:
    """``key`` per round (index = round) of a row measured in interleaved rounds, else None."""
    if r.extra.get("schedule") != "interleaved":
        return None
    values = r.extra.get(f"{key}_runs")
    return list(values) if values else None


def summarize(per_round: list[float]) -> dict:
    return {
        "median": statistics.median(per_round),
        "min": min(per_round),
        "max": max(per_round),
        "rounds": len(per_round),
        "per_round": per_round,
    }


def paired_ratio(num: SpeedResult, dens: list[SpeedResult], key: str = "decode_tok_s") -> dict | None:
    """Per round, ``num`` / the largest of ``dens`` in THAT round; summarized (:func:`summarize`).

    None unless every row has one value per round, all over the same rounds, all positive.
    """
    a = round_values(num, key)
    bs = [round_values(d, key) for d in dens]
    if a is None or not bs or any(b is None or len(b) != len(a) for b in bs):
        return None
    per_round = []
    for i, x in enumerate(a):
        den = max(b[i] for b in bs)
        if not den > 0 or math.isnan(x):
            return None
        per_round.append(x / den)
    return summarize(per_round)


def _row_ratio(r: SpeedResult, dens: list[SpeedResult], key: str) -> float | None:
    """Paired median over rounds when every row has rounds, else this row's median / the best median."""
    if not dens:
        return None
    paired = paired_ratio(r, dens, key)
    if paired is not None:
        return paired["median"]
    return _ratio(getattr(r, key), max(getattr(d, key) for d in dens))


def with_ratios(results: list[SpeedResult]) -> list[dict]:
    """Rows for the table/JSON: each result plus its ratios to the best anchor and to same-runtime fp32."""
    anchors = anchor_rows(results)
    rows = []
    for r in results:
        fp32 = [f for f in [fp32_row(results, r.runtime)] if f is not None]
        rows.append(
            {
                **asdict(r),
                "decode_x_anchor": _row_ratio(r, anchors, "decode_tok_s"),
                "prefill_x_anchor": _row_ratio(r, anchors, "prefill_tok_s"),
                "decode_x_fp32": _row_ratio(r, fp32, "decode_tok_s"),
                "prefill_x_fp32": _row_ratio(r, fp32, "prefill_tok_s"),
            }
        )
    return rows


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def format_speed_table(rows: list[dict]) -> str:
    header = (
        f"{'configuration':<26}{'prec':>6}{'decode t/s':>11}{'x anchor':>9}{'x fp32':>8}"
        f"{'prefill t/s':>12}{'x anchor':>9}{'x fp32':>8}{'peak RSS MiB':>13}{'file MiB':>10}{'tokens':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['config']:<26}{r['precision']:>6}{_fmt(r['decode_tok_s'], '.1f'):>11}"
            f"{_fmt(r['decode_x_anchor'], '.2f'):>9}{_fmt(r['decode_x_fp32'], '.2f'):>8}"
            f"{_fmt(r['prefill_tok_s'], '.1f'):>12}{_fmt(r['prefill_x_anchor'], '.2f'):>9}"
            f"{_fmt(r['prefill_x_fp32'], '.2f'):>8}{_fmt(r['peak_rss_mib'], '.0f'):>13}"
            f"{_fmt(r['artifact_mib'], '.1f'):>10}{r['new_tokens']:>5}x{r['runs']}"
        )
    return "\n".join(lines)


def resident_sefp_weights(
    mapped_rss_mib: dict[int, float], sefp_stored_bytes: int
) -> tuple[dict[int, float], str | None]:
    """Resident SEFP weight MiB per precision of an mmapped artifact, by difference.

    ``mapped_rss_mib[k]`` is the resident part of the artifact's file mapping after
    decoding at E5Mk in a fresh process. It holds the SEFP planes precision k
    touched plus the non-SEFP parts (embedding rows, norms, lm_head), which do
    not depend on k. E5M8 reads every plane, so
    ``non_sefp = mapped[8] - all SEFP bytes`` and ``sefp(k) = mapped[k] - non_sefp``.
    Returns ({k: MiB}, None) or ({}, reason) when the data cannot support it.
    """
    if 8 not in mapped_rss_mib:
        return {}, "needs a measurement at E5M8"
    total_mib = sefp_stored_bytes / 2**20
    if not mapped_rss_mib[8] >= 0.95 * total_mib:
        return {}, (
            f"the artifact mapping held {mapped_rss_mib[8]:.1f} MiB at E5M8, less than its {total_mib:.1f} MiB "
            "of SEFP data: the weights are not served from an mmapped file"
        )
    non_sefp = max(mapped_rss_mib[8] - total_mib, 0.0)
    return {k: max(v - non_sefp, 0.0) for k, v in sorted(mapped_rss_mib.items())}, None


def _paired_text(paired: dict) -> str:
    return f"paired median of {paired['rounds']} rounds, range {paired['min']:.2f}-{paired['max']:.2f}"


def _speed_ratio(num: SpeedResult, dens: list[SpeedResult]) -> tuple[float, dict | None]:
    """Decode ``num`` / the best of ``dens``: the paired median when all have rounds, else the ratio of medians."""
    paired = paired_ratio(num, dens)
    if paired is not None:
        return paired["median"], paired
    return num.decode_tok_s / max(d.decode_tok_s for d in dens), None


def _vs_anchor(results, runtime: str, goal: float) -> Goal:
    name = f"{runtime} E5M3 decode vs the best anchor (llama.cpp Q4_1 1/N threads, onnxruntime-genai int4)"
    anchor = best_anchor(results)
    e3 = _find(results, runtime, "E5M3", f"{runtime} fused")
    if anchor is None or e3 is None:
        return Goal(name, f">= {goal}x", "-", None, f"needs an anchor row and the {runtime} fused E5M3 row")
    ratio, paired = _speed_ratio(e3, anchor_rows(results))
    detail = "; ".join(f"{a.config} {a.decode_tok_s:.1f} tok/s" for a in anchor_rows(results))
    if paired is None:
        measured = f"{ratio:.2f}x ({e3.decode_tok_s:.1f} vs {anchor.config})"
    else:  # per round vs that round's fastest anchor
        measured = f"{ratio:.2f}x ({_paired_text(paired)}; medians {e3.decode_tok_s:.1f} vs {anchor.config})"
    return Goal(name, f">= {goal}x", measured, ratio >= goal, detail, paired)


def _e3_vs_e8(results) -> Goal:
    name = "onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"
    e3, e8 = (_find(results, "onnx", f"E5M{k}", "onnx fused") for k in (3, 8))
    if e3 is None or e8 is None:
        return Goal(name, f">= {GOAL_E5M3_VS_E5M8}x", "-", None, "needs the onnx fused E5M3 and E5M8 rows")
    ratio, paired = _speed_ratio(e3, [e8])
    measured = f"{ratio:.2f}x" + (f" ({_paired_text(paired)})" if paired else "")
    return Goal(name, f">= {GOAL_E5M3_VS_E5M8}x", measured, ratio >= GOAL_E5M3_VS_E5M8, "", paired)


def _first_token(results, prompt_tokens: int | None) -> Goal:
    name = "onnx E5M3 first-token latency vs llama.cpp"
    llamas = [r for r in results if r.runtime.startswith(LLAMA_CPP)]
    e3 = _find(results, "onnx", "E5M3", "onnx fused")
    if not llamas or e3 is None or not prompt_tokens:
        return Goal(name, "<= llama.cpp's", "-", None, "needs the llama.cpp rows and the onnx fused E5M3 row")
    ours = first_token_ms(e3, prompt_tokens)
    theirs = min(first_token_ms(r, prompt_tokens) for r in llamas)
    measured = f"{ours:.1f} ms vs {theirs:.1f} ms"
    met = ours <= theirs
    speed = paired_ratio(e3, llamas, "prefill_tok_s")
    paired = None
    if speed is not None:  # latency ratio ours / theirs = fastest llama.cpp prefill / ours, per round
        paired = summarize([1.0 / x for x in speed["per_round"]])
        met = paired["median"] <= 1.0
        measured += f" (latency ratio {paired['median']:.2f}, {_paired_text(paired)})"
    return Goal(name, "<= llama.cpp's (fastest row)", measured, met, f"{prompt_tokens}-token prompt", paired)


def _sizes(results) -> Goal:
    sizes = {r.runtime: r.artifact_mib for r in results if r.config.endswith("fused") and r.bits is not None}
    if not sizes:
        return Goal("artifact size at rest", f"<= {GOAL_ARTIFACT_MIB:.0f} MiB", "-", None, "needs a fused row")
    text = ", ".join(f"{k} {v:.1f} MiB" for k, v in sizes.items())
    return Goal(
        "artifact size at rest", f"<= {GOAL_ARTIFACT_MIB:.0f} MiB", text, max(sizes.values()) <= GOAL_ARTIFACT_MIB
    )


def _pte_e8_vs_fp32(results) -> Goal:
    name = "executorch E5M8 decode vs the fp32 XNNPACK .pte"
    fp32, e8 = fp32_row(results, "executorch"), _find(results, "executorch", "E5M8", "executorch fused")
    if fp32 is None or e8 is None:
        return Goal(name, f">= {GOAL_PTE_E5M8_VS_FP32}x", "-", None, "needs the executorch fused E5M8 and fp32 rows")
    ratio, paired = _speed_ratio(e8, [fp32])
    measured = f"{ratio:.2f}x" + (f" ({_paired_text(paired)})" if paired else "")
    return Goal(name, f">= {GOAL_PTE_E5M8_VS_FP32}x", measured, ratio >= GOAL_PTE_E5M8_VS_FP32, "", paired)


def _export_when(e: dict) -> str:
    if not e.get("cached"):
        return "this run"
    return f"from the cache, exported {e['finished']}" if e.get("finished") else "from the cache"


def _export_goals(exports: dict[str, dict]) -> list[Goal]:
    """One goal per timed ExecuTorch export this run used (a configuration left out of the run has none)."""
    goals = []
    for name, limit in GOAL_EXPORT_S.items():
        e = exports.get(name)
        if e is None:
            continue
        goal = Goal(f"{name} export time", f"<= {limit / 60:.0f} min", "-", None)
        if e.get("wall_s") is None:
            goal.detail = "cached before export times were recorded: delete the cached artifact to time its export"
        else:
            goal.measured = f"{e['wall_s']:.0f} s ({_export_when(e)})"
            goal.met = e["wall_s"] <= limit
            load = e.get("load_1min")
            threads = e.get("torch_threads")
            goal.detail = "model load + export, wall clock" + (f", {threads} torch threads" if threads else "")
            if load:
                goal.detail += f"; 1-min load average {load[0]:.2f} at the start, {load[1]:.2f} at the end"
        goals.append(goal)
    return goals


def format_exports(exports: dict[str, dict]) -> str:
    """The export time of each artifact the run used: exported by it, or by an earlier run (cache)."""
    lines = ["export time (model load + export, wall clock; load = 1-min load average at start/end):"]
    for name, e in exports.items():
        wall = "-" if e.get("wall_s") is None else f"{e['wall_s']:.0f} s"
        if e.get("wall_s") is None:
            when = "from the cache, not recorded (exported before the bench recorded export times)"
        else:
            when = _export_when(e)
            if e.get("load_1min"):
                when += ", load {:.2f}/{:.2f}".format(*e["load_1min"])
            if e.get("torch_threads"):
                when += f", {e['torch_threads']} torch threads"
        lines.append(f"  {name:<26}{wall:>8}  {when}")
    return "\n".join(lines)


def evaluate_goals(
    results: list[SpeedResult],
    switch: dict[str, dict],
    resident_mib: dict[int, float],
    resident_note: str | None,
    sefp_weights: int | None,
    prompt_tokens: int | None = None,
    exports: dict[str, dict] | None = None,
) -> list[Goal]:
    """The speed issues' goals, each met / not met / not measured, with the numbers.

    ``exports`` (bench.json ``exports``; None in older ones): artifact name -> its export time, for the
    export-time goals.
    """
    goals = [
        _vs_anchor(results, "onnx", GOAL_ONNX_E5M3_VS_ANCHOR),
        _e3_vs_e8(results),
        _first_token(results, prompt_tokens),
        _sizes(results),
        _vs_anchor(results, "executorch", GOAL_PTE_E5M3_VS_ANCHOR),
        _pte_e8_vs_fp32(results),
    ]
    if 3 in resident_mib and sefp_weights:
        fp16_mib = 2 * sefp_weights / 2**20
        ratio = resident_mib[3] / fp16_mib
        goals.append(
            Goal(
                "resident SEFP weights at E5M3 vs fp16",
                "<= 0.31x",
                f"{ratio:.3f}x",
                ratio <= GOAL_E5M3_RESIDENT_VS_FP16,
                f"{resident_mib[3]:.1f} MiB resident of {fp16_mib:.1f} MiB fp16 (mmapped .pte, same file serves E5M8)",
            )
        )
    else:
        goals.append(
            Goal(
                "resident SEFP weights at E5M3 vs fp16",
                "<= 0.31x",
                "-",
                None,
                resident_note or "needs the ExecuTorch fused rows at E5M3 and E5M8",
            )
        )
    if switch:

        def allowed(s: dict) -> float:
            return max(GOAL_SWITCH_TOLERANCE, s.get("noise") or 0.0)

        text = ", ".join(f"{name} {s['switch_ratio']:.3f}" for name, s in switch.items())
        noise = ", ".join(f"{name} {s['noise']:.3f}" for name, s in switch.items() if s.get("noise") is not None)
        # One-sided: alternating may even run faster (the other precision's planes are warm in cache);
        # only a slowdown beyond noise is a cost.
        met = all(s["switch_ratio"] - 1 <= allowed(s) for s in switch.values())
        goals.append(
            Goal(
                "precision switching cost",
                f"alternating/fixed <= 1 + max({GOAL_SWITCH_TOLERANCE}, run-to-run noise)",
                text,
                met,
                "ratio of median decode-step times, bits alternating 3/8 every call vs fixed"
                + (f"; noise (spread of per-round medians): {noise}" if noise else ""),
            )
        )
    else:
        goals.append(
            Goal("precision switching cost", f"within 1 +- {GOAL_SWITCH_TOLERANCE}", "-", None, "not measured")
        )
    return goals + _export_goals(exports or {})


def read_per_token(storage: dict | None) -> dict[int, tuple[float, float]] | None:
    """``{bits: (weight bits read per SEFP weight, SEFP weight bytes read per token)}`` with the artifact's floors.

    ``storage``: bench.json ``sefp_storage``, whose ``layers`` (name -> packed [rows, K]) and ``precision_floors``
    (the manifest's, name -> min_bits) a layer at ``max(bits, floor)`` reads from. None for a bench.json that
    predates them (the table then reads every layer at ``bits``).
    """
    if not storage or "layers" not in storage or "precision_floors" not in storage:
        return None
    from otaro_export.reconstruction import unit_bytes_read
    from otaro_export.sefp import SUPPORTED_BITS

    layers, floors = storage["layers"], storage["precision_floors"]
    total = sum(rows * k for rows, k in layers.values())
    if not total:
        return None
    out = {}
    for bits in SUPPORTED_BITS:
        read = sum(unit_bytes_read(rows, k, max(bits, floors.get(name, bits))) for name, (rows, k) in layers.items())
        out[bits] = (8 * read / total, read)
    return out


def format_memory_table(
    rows: list[dict], resident_mib: dict[int, float], sefp_weights: int | None, storage: dict | None = None
) -> str:
    """Per precision: bits the kernel reads per SEFP weight and SEFP MiB it reads per token (the artifact's
    floors applied, :func:`read_per_token`), resident SEFP weights (mmapped .pte), peak RSS."""
    from otaro_export.packing import bytes_per_weight_read

    configs = [c for c in dict.fromkeys(r["config"] for r in rows if r["bits"] is not None)]
    bits = sorted({r["bits"] for r in rows if r["bits"] is not None})
    floored = read_per_token(storage)
    header = f"{'prec':<6}{'bits/w read':>14}{'MiB read/token':>16}{'resident SEFP MiB':>19}{'x fp16':>8}" + "".join(
        f"{'RSS ' + c:>{max(len(c) + 6, 12)}}" for c in configs
    )
    lines = [header, "-" * len(header)]
    fp16_mib = 2 * sefp_weights / 2**20 if sefp_weights else None
    for k in bits:
        res = resident_mib.get(k)
        if floored is not None:
            bpw, read_mib = floored[k][0], floored[k][1] / 2**20
        else:  # an older bench.json: no floors recorded, every layer at k
            bpw = 8 * bytes_per_weight_read(k)
            read_mib = sefp_weights * bytes_per_weight_read(k) / 2**20 if sefp_weights else None
        line = f"{'E5M' + str(k):<6}{bpw:>14.3f}{_fmt(read_mib, '.1f'):>16}{_fmt(res, '.1f'):>19}"
        line += f"{_fmt(res / fp16_mib if res is not None and fp16_mib else None, '.3f'):>8}"
        for c in configs:
            peak = next((r["peak_rss_mib"] for r in rows if r["config"] == c and r["bits"] == k), None)
            line += f"{_fmt(peak, '.0f'):>{max(len(c) + 6, 12)}}"
        lines.append(line)
    for r in rows:
        if r["bits"] is None:
            lines.append(
                f"{r['precision']:<6}{'':>14}{'':>16}{'':>19}{'':>8}  peak RSS {r['config']}: {r['peak_rss_mib']:.0f} MiB"
            )
    if floored is None and bits:
        why = (
            "this run has no ONNX SEFP artifact, whose initializers and manifest give them"
            if storage is None
            else "this bench.json predates their record"
        )
        lines.append(f"(bits/w and MiB read without precision floors: {why})")
    return "\n".join(lines)


def format_goals(goals: list[Goal]) -> str:
    mark = {True: "MET", False: "NOT MET", None: "NOT MEASURED"}
    lines = []
    for g in goals:
        lines.append(
            f"[{mark[g.met]:>12}] {g.name}: {g.measured} (goal {g.target})" + (f"; {g.detail}" if g.detail else "")
        )
    return "\n".join(lines)


def format_accuracy_table(accuracy: dict[str, list], rules: dict[str, dict] | None = None) -> str:
    """One table per run (untuned, tuned), each titled with the rules it was measured through (``rules``:
    bench.json ``accuracy_rules``; None for a bench.json from before they were recorded)."""
    from otaro_export.train.evaluation import format_table

    tables = []
    for name, rows in accuracy.items():
        title = f"accuracy, {name} ({rows[0].tokens} scored tokens)"
        if rules is not None and name in rules:
            title += f"\n{describe_rules(rules[name])}"
        elif rules is None and name == "tuned":
            title += (
                "\n(its rules were not recorded: a bench.json from before they were, when the tuned row ran "
                "through the export defaults, not the run's)"
            )
        tables.append(format_table(rows, title))
    return "\n\n".join(tables)


def describe_rules(rules: dict) -> str:
    """``otaro eval``'s wording of the settings a run was measured through, ``(as tuned)`` after those its
    checkpoint recorded (``from_run``)."""
    int8 = rules["int8_activations"]
    settings = {
        "reconstruction": f"reconstruction {rules['reconstruction']}",
        "exponent_rule": f"exponents {rules['exponent_rule']}",
        "layer_floors": f"floors {rules['layer_floors']}",
        "int8_activations": f"int8 activations {f'up to E5M{int8}' if int8 else 'off'}",
    }
    from_run = rules.get("from_run", [])
    text = ", ".join(f"{value}{' (as tuned)' if key in from_run else ''}" for key, value in settings.items())
    text += f", lm_head {rules['lm_head']}"
    if "checkpoint" in rules:
        step = f" (step {rules['step']})" if rules.get("step") is not None else ""
        text = f"{rules['checkpoint']}{step}: {text}"
    return f"  {text}"


def save_json(path: Path, payload: dict) -> None:
    def default(obj):
        if hasattr(obj, "__dataclass_fields__"):
            return asdict(obj)
        if isinstance(obj, Path):
            return str(obj)
        raise TypeError(f"cannot serialize {type(obj).__name__}")

    Path(path).write_text(json.dumps(payload, indent=2, default=default) + "\n", encoding="utf-8")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_speed(rows: list[dict], path: Path, title: str) -> None:
    """Decode and prefill tokens/s vs precision: one line per SEFP config, dashed lines for baselines."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in (
        (axes[0], "decode_tok_s", "decode tokens/s"),
        (axes[1], "prefill_tok_s", "prefill tokens/s"),
    ):
        configs = []
        for r in rows:
            if r["bits"] is not None and r["config"] not in configs:
                configs.append(r["config"])
        for config in configs:
            pts = sorted((r["bits"], r[key]) for r in rows if r["config"] == config and r["bits"] is not None)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=config)
        for i, r in enumerate(r for r in rows if r["bits"] is None):
            ax.axhline(r[key], linestyle="--", color=f"C{len(configs) + i}", label=f"{r['config']} ({r['precision']})")
        ax.set_xlabel("mantissa bits (E5Mk)")
        ax.set_ylabel(label)
        ax.set_yscale("log")
        ax.set_xticks(range(3, 9))
        ax.grid(True, alpha=0.3, which="both")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)


def plot_accuracy(accuracy: dict[str, list], path: Path, title: str) -> None:
    """Perplexity and KL to FP vs precision, one line per model (untuned / tuned)."""
    plt = _pyplot()
    fig, (ax_ppl, ax_kl) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (name, rows) in enumerate(accuracy.items()):
        quant = [r for r in rows if r.bits is not None]
        fp = next((r for r in rows if r.bits is None), None)
        ax_ppl.plot([r.bits for r in quant], [r.ppl for r in quant], marker="o", color=f"C{i}", label=name)
        if fp is not None:
            ax_ppl.axhline(fp.ppl, linestyle="--", color=f"C{i}", alpha=0.6, label=f"{name}: FP")
        ax_kl.plot([r.bits for r in quant], [max(r.kl, 1e-6) for r in quant], marker="o", color=f"C{i}", label=name)
    ax_ppl.set_ylabel("perplexity")
    ax_ppl.set_yscale("log")  # E5M3 untuned is orders of magnitude above FP
    ax_kl.set_ylabel("KL to FP (nats/token)")
    ax_kl.set_yscale("log")
    for ax in (ax_ppl, ax_kl):
        ax.set_xlabel("mantissa bits (E5Mk)")
        ax.set_xticks(range(3, 9))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(str(path), dpi=110)
    plt.close(fig)
