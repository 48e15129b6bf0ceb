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
