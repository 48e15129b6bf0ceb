"""Ratios, goal verdicts, table, JSON and plots of ``otaro bench`` (pure functions, made-up numbers)."""

from __future__ import annotations

import json

import pytest

from otaro_export.bench import report
from otaro_export.bench.report import SpeedResult


def _r(config, runtime, precision, bits, decode, prefill=100.0, rss=300.0):
    return SpeedResult(config, runtime, precision, bits, decode, prefill, rss, 50.0, 128, 5)


@pytest.fixture
def results():
    return [
        _r("llama.cpp", "llama.cpp", "Q4_1", None, 100.0, prefill=400.0),
        _r("onnxruntime-genai int4", "onnxruntime-genai", "int4", None, 90.0, prefill=300.0),
        _r("onnx fused", "onnx", "E5M3", 3, 120.0, prefill=200.0),
        _r("onnx fused", "onnx", "E5M8", 8, 90.0),
        _r("onnx fp32", "onnx", "fp32", None, 50.0, prefill=400.0),
        _r("executorch fused", "executorch", "E5M3", 3, 80.0),
        _r("executorch fused", "executorch", "E5M8", 8, 70.0),
        _r("executorch fp32", "executorch", "fp32", None, 70.0),
    ]


def test_ratios_use_the_best_anchor_and_the_same_runtimes_fp32(results):
    rows = {(r["config"], r["precision"]): r for r in report.with_ratios(results)}
    onnx3 = rows[("onnx fused", "E5M3")]
    assert onnx3["decode_x_anchor"] == pytest.approx(1.2)  # llama.cpp (100) beats onnxruntime-genai (90)
    assert onnx3["decode_x_fp32"] == pytest.approx(120 / 50)  # ONNX fp32, not ExecuTorch fp32
    assert onnx3["prefill_x_anchor"] == pytest.approx(0.5)
    assert onnx3["prefill_x_fp32"] == pytest.approx(0.5)
    assert rows[("executorch fused", "E5M8")]["decode_x_fp32"] == pytest.approx(1.0)
    assert rows[("llama.cpp", "Q4_1")]["decode_x_fp32"] is None  # no llama.cpp fp32 row


def test_ratios_missing_baselines_are_none():
    rows = report.with_ratios([_r("onnx fused", "onnx", "E5M3", 3, 10.0)])
    assert rows[0]["decode_x_anchor"] is None and rows[0]["decode_x_fp32"] is None
    assert " - " in report.format_speed_table(rows) or "-" in report.format_speed_table(rows).splitlines()[2]


def test_goals_verdicts(results):
    switch = {"onnx fused": {"switch_ratio": 1.01}, "executorch fused": {"switch_ratio": 0.99}}
    goals = {g.name: g for g in report.evaluate_goals(results, switch, {3: 25.0, 8: 60.0}, None, 100 * 2**20 // 2, 47)}
    onnx = goals["onnx E5M3 decode vs the best anchor (llama.cpp Q4_1 1/N threads, onnxruntime-genai int4)"]
    assert onnx.met is False and onnx.measured.startswith("1.20x (120.0 vs llama.cpp)")  # goal 1.3x
    assert "onnxruntime-genai int4 90.0 tok/s" in onnx.detail
    dial = goals["onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"]
    assert dial.met is False and dial.measured == "1.33x"  # 120 / 90 < 1.6
    first = goals["onnx E5M3 first-token latency vs llama.cpp"]
    assert first.met is False and first.measured == "235.0 ms vs 117.5 ms"  # 47 tokens at 200 vs 400 tok/s
    assert goals["artifact size at rest"].met is True  # 50 MiB
    pte = goals["executorch E5M3 decode vs the best anchor (llama.cpp Q4_1 1/N threads, onnxruntime-genai int4)"]
    assert pte.met is False and pte.measured.startswith("0.80x")
    assert goals["executorch E5M8 decode vs the fp32 XNNPACK .pte"].met is False  # 1.0x < 1.2x
    resident = goals["resident SEFP weights at E5M3 vs fp16"]
    assert resident.met is True and resident.measured == "0.250x"  # 25 MiB of 100 MiB fp16
    assert goals["precision switching cost"].met is True


def test_goals_not_measured_and_switching_failure():
    goals = report.evaluate_goals(
        [_r("onnx fused", "onnx", "E5M3", 3, 10.0)],
        {"onnx fused": {"switch_ratio": 1.2}, "executorch fused": {"switch_ratio": 0.8}},
        {},
        "no mmap",
        None,
    )
    by_name = {g.name: g for g in goals}
    assert by_name["onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"].met is None
    assert by_name["executorch E5M8 decode vs the fp32 XNNPACK .pte"].met is None
    assert by_name["onnx E5M3 first-token latency vs llama.cpp"].met is None
    assert by_name["resident SEFP weights at E5M3 vs fp16"].met is None
    assert by_name["resident SEFP weights at E5M3 vs fp16"].detail == "no mmap"
    assert by_name["precision switching cost"].met is False
    text = report.format_goals(goals)
    assert "NOT MEASURED" in text and "NOT MET" in text


def test_resident_weights_by_difference():
    stored = 100 * 2**20  # 100 MiB of SEFP planes; E5M8 mapping = planes + 30 MiB of other weights
    resident, note = report.resident_sefp_weights({3: 75.0, 8: 130.0}, stored)
    assert note is None
    assert resident == {3: pytest.approx(45.0), 8: pytest.approx(100.0)}


def test_resident_weights_refuses_an_unmapped_artifact():
    resident, note = report.resident_sefp_weights({3: 0.0, 8: 0.0}, 100 * 2**20)
    assert resident == {} and "not served from an mmapped file" in note
    assert report.resident_sefp_weights({3: 10.0}, 1)[1] == "needs a measurement at E5M8"


def test_table_json_and_plots(tmp_path, results):
    from otaro_export.train.evaluation import PrecisionMetrics

    rows = report.with_ratios(results)
    table = report.format_speed_table(rows)
    assert len(table.splitlines()) == 2 + len(results)
    assert "onnx fused" in table and "1.20" in table
    report.save_json(tmp_path / "b.json", {"speed": rows, "path": tmp_path})
    assert json.loads((tmp_path / "b.json").read_text())["speed"][2]["decode_x_anchor"] == pytest.approx(1.2)
    report.plot_speed(rows, tmp_path / "speed.png", "t")
    acc = {
        "untuned": [PrecisionMetrics("E5M3", 3, 20.0, 0.5, 0.7, 10), PrecisionMetrics("FP", None, 10.0, 0.0, 1.0, 10)]
    }
    report.plot_accuracy(acc, tmp_path / "acc.png", "t")
    for name in ("speed.png", "acc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert "E5M3" in report.format_accuracy_table(acc)


def test_memory_table(results):
    rows = report.with_ratios(results)
    table = report.format_memory_table(rows, {3: 25.0, 8: 60.0}, 50 * 2**20)  # fp16 = 100 MiB
    lines = table.splitlines()
    e5m3 = next(line for line in lines if line.startswith("E5M3"))
    assert "4.125" in e5m3 and "25.0" in e5m3 and "0.250" in e5m3  # p0 + exponents: 4.125 bits/weight
    assert any(line.startswith("fp32") for line in lines)
    # no storage record (a run without the ONNX artifact, e.g. --targets executorch): says why, not "older file"
    assert "this run has no ONNX SEFP artifact" in table and "predates" not in table


def test_anchor_goal_uses_the_fastest_anchor_row(results):
    slow_threads = [r for r in results if r.runtime != "llama.cpp"] + [
        _r("llama.cpp", "llama.cpp", "Q4_1", None, 20.0),  # 2 threads collapsed on a loaded machine
        _r("llama.cpp 1 thread", "llama.cpp-1thread", "Q4_1", None, 150.0),
    ]
    goal = report.evaluate_goals(slow_threads, {}, {}, None, None)[0]
    assert goal.met is False and goal.measured == "0.80x (120.0 vs llama.cpp 1 thread)"
    assert "llama.cpp 20.0 tok/s" in goal.detail
    rows = {(r["config"], r["precision"]): r for r in report.with_ratios(slow_threads)}
    assert rows[("onnx fused", "E5M3")]["decode_x_anchor"] == pytest.approx(0.8)


def _rounds(config, runtime, precision, bits, decode_runs, prefill_runs=None):
    """A row measured in interleaved rounds: its medians plus one value per round."""
    import statistics

    prefill_runs = prefill_runs or [100.0] * len(decode_runs)
    extra = {"schedule": "interleaved", "decode_tok_s_runs": decode_runs, "prefill_tok_s_runs": prefill_runs}
    return SpeedResult(
        config, runtime, precision, bits, statistics.median(decode_runs), statistics.median(prefill_runs),
        300.0, 50.0, 128, len(decode_runs), extra,
    )  # fmt: skip


def test_paired_ratio_divides_within_each_round_by_that_rounds_best():
    e3 = _rounds("onnx fused", "onnx", "E5M3", 3, [100.0, 50.0, 90.0])
    llama = _rounds("llama.cpp", "llama.cpp", "Q4_1", None, [80.0, 20.0, 100.0])
    genai = _rounds("onnxruntime-genai int4", "onnxruntime-genai", "int4", None, [50.0, 40.0, 60.0])
    paired = report.paired_ratio(e3, [llama, genai])
    assert paired["per_round"] == pytest.approx([1.25, 1.25, 0.9])  # round 2: genai (40) beat the collapsed llama
    assert (paired["median"], paired["min"], paired["max"], paired["rounds"]) == pytest.approx((1.25, 0.9, 1.25, 3))
    sequential = SpeedResult("llama.cpp", "llama.cpp", "Q4_1", None, 80.0, 1.0, 1.0, 1.0, 128, 3)
    assert report.paired_ratio(e3, [sequential]) is None  # not measured in rounds: no pairing
    assert report.paired_ratio(e3, [_rounds("x", "onnx", "fp32", None, [1.0, 2.0])]) is None  # other rounds
    assert report.paired_ratio(e3, [_rounds("x", "onnx", "fp32", None, [1.0, 0.0, 2.0])]) is None
    rows = {r["config"]: r for r in report.with_ratios([llama, genai, e3])}
    assert rows["onnx fused"]["decode_x_anchor"] == pytest.approx(1.25)  # paired median, not 90 / 80
    assert rows["llama.cpp"]["decode_x_anchor"] == pytest.approx(1.0)  # rounds 1, 3 itself; round 2 0.5


def test_goals_use_the_paired_ratios_when_every_row_has_rounds():
    # drift: round 2 ran on a loaded machine. Ratio of medians E5M3/E5M8 = 90/60 = 1.5 (< 1.6), but
    # within every round E5M3 is >= 1.67x E5M8 except round 3
    e3 = _rounds("onnx fused", "onnx", "E5M3", 3, [100.0, 50.0, 90.0], prefill_runs=[200.0, 100.0, 180.0])
    e8 = _rounds("onnx fused", "onnx", "E5M8", 8, [60.0, 30.0, 70.0])
    fp32 = _rounds("onnx fp32", "onnx", "fp32", None, [40.0, 20.0, 50.0])
    llama = _rounds("llama.cpp", "llama.cpp", "Q4_1", None, [70.0, 35.0, 80.0], prefill_runs=[100.0, 50.0, 200.0])
    goals = {g.name: g for g in report.evaluate_goals([llama, e3, e8, fp32], {}, {}, None, None, 50)}
    dial = goals["onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"]
    assert dial.met is True and dial.paired["median"] == pytest.approx(100 / 60)
    assert dial.measured == "1.67x (paired median of 3 rounds, range 1.29-1.67)"
    anchor = goals["onnx E5M3 decode vs the best anchor (llama.cpp Q4_1 1/N threads, onnxruntime-genai int4)"]
    assert anchor.paired["per_round"] == pytest.approx([100 / 70, 50 / 35, 90 / 80])
    assert anchor.measured.startswith("1.43x (paired median of 3 rounds, range 1.12-1.43; medians 90.0 vs llama.cpp")
    first = goals["onnx E5M3 first-token latency vs llama.cpp"]
    assert first.paired["per_round"] == pytest.approx([0.5, 0.5, 200 / 180])  # ours / llama.cpp's latency
    assert first.met is True and "latency ratio 0.50" in first.measured
    # one row without rounds: that goal falls back to the ratio of medians
    e8_sequential = SpeedResult("onnx fused", "onnx", "E5M8", 8, 60.0, 100.0, 300.0, 50.0, 128, 3)
    goals = {g.name: g for g in report.evaluate_goals([llama, e3, e8_sequential], {}, {}, None, None, 50)}
    dial = goals["onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"]
    assert dial.paired is None and dial.measured == "1.50x" and dial.met is False


def test_export_time_goals_only_for_the_executorch_exports_of_the_run(results):
    exports = {
        "onnx-sefp-fused": {"configs": ["onnx fused"], "wall_s": 70.0, "cached": False},
        "executorch-sefp-fused": {
            "configs": ["executorch fused"],
            "wall_s": 150.0,
            "cached": False,
            "load_1min": [1.5, 2.25],
            "torch_threads": 2,
        },
        "executorch-sefp-portable": {
            "configs": ["executorch portable"],
            "wall_s": 601.0,
            "cached": True,
            "finished": "2026-12-01 21:00:00 UTC",
        },
    }
    goals = {g.name: g for g in report.evaluate_goals(results, {}, {}, None, None, 47, exports=exports)}
    fused, portable = goals["executorch-sefp-fused export time"], goals["executorch-sefp-portable export time"]
    assert fused.met is True and fused.target == "<= 3 min" and fused.measured == "150 s (this run)"
    assert "2 torch threads" in fused.detail and "1.50 at the start, 2.25 at the end" in fused.detail
    assert portable.met is False and portable.target == "<= 10 min"
    assert portable.measured == "601 s (from the cache, exported 2026-12-01 21:00:00 UTC)"
    assert not any(name.startswith("onnx") and name.endswith("export time") for name in goals)  # no ONNX goal
    # a run without the portable row has no portable goal; a cache from before export times: not measured
    older = {"executorch-sefp-fused": {"configs": ["executorch fused"], "wall_s": None, "cached": True}}
    goals = {g.name: g for g in report.evaluate_goals(results, {}, {}, None, None, 47, exports=older)}
    assert "executorch-sefp-portable export time" not in goals
    assert goals["executorch-sefp-fused export time"].met is None
    assert "delete the cached artifact" in goals["executorch-sefp-fused export time"].detail
    # a bench.json from before export times were recorded: no export goal at all
    assert not any(g.name.endswith("export time") for g in report.evaluate_goals(results, {}, {}, None, None, 47))
    text = report.format_exports({**exports, **{"executorch-fp32": {"wall_s": None, "cached": True}}})
    lines = text.splitlines()
    assert lines[2].split() == [
        "executorch-sefp-fused",
        "150",
        "s",
        "this",
        "run,",
        "load",
        "1.50/2.25,",
        "2",
        "torch",
        "threads",
    ]
    assert "601 s  from the cache, exported 2026-12-01 21:00:00 UTC" in lines[3]
    assert lines[4].split()[:2] == ["executorch-fp32", "-"] and "not recorded" in lines[4]
