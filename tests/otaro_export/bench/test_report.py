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
        _r("onnx fused", "onnx", "E5M3", 3, 120.0, prefill=200.0),
        _r("onnx fused", "onnx", "E5M8", 8, 90.0),
        _r("onnx fp32", "onnx", "fp32", None, 50.0, prefill=400.0),
        _r("executorch fused", "executorch", "E5M3", 3, 80.0),
        _r("executorch fused", "executorch", "E5M8", 8, 70.0),
        _r("executorch fp32", "executorch", "fp32", None, 70.0),
    ]


def test_ratios_use_llama_and_the_same_runtimes_fp32(results):
    rows = {(r["config"], r["precision"]): r for r in report.with_ratios(results)}
    onnx3 = rows[("onnx fused", "E5M3")]
    assert onnx3["decode_x_llama"] == pytest.approx(1.2)
    assert onnx3["decode_x_fp32"] == pytest.approx(120 / 50)  # ONNX fp32, not ExecuTorch fp32
    assert onnx3["prefill_x_llama"] == pytest.approx(0.5)
    assert onnx3["prefill_x_fp32"] == pytest.approx(0.5)
    assert rows[("executorch fused", "E5M8")]["decode_x_fp32"] == pytest.approx(1.0)
    assert rows[("llama.cpp", "Q4_1")]["decode_x_fp32"] is None  # no llama.cpp fp32 row


def test_ratios_missing_baselines_are_none():
    rows = report.with_ratios([_r("onnx fused", "onnx", "E5M3", 3, 10.0)])
    assert rows[0]["decode_x_llama"] is None and rows[0]["decode_x_fp32"] is None
    assert " - " in report.format_speed_table(rows) or "-" in report.format_speed_table(rows).splitlines()[2]


def test_goals_verdicts(results):
    switch = {"onnx fused": {"switch_ratio": 1.01}, "executorch fused": {"switch_ratio": 0.99}}
    goals = {g.name: g for g in report.evaluate_goals(results, switch, {3: 25.0, 8: 60.0}, None, 100 * 2**20 // 2)}
    llama = goals["E5M3 decode vs llama.cpp Q4_1"]
    assert llama.met is True and llama.measured.startswith("1.20x (onnx fused vs llama.cpp)")
    assert "stretch not met" in llama.detail
    fp32 = goals["E5M8 decode vs our fp32 export"]
    assert fp32.met is False  # onnx 1.8x but executorch only 1.0x
    assert "onnx 1.80x" in fp32.measured and "executorch 1.00x" in fp32.measured
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
    assert by_name["E5M3 decode vs llama.cpp Q4_1"].met is None
    assert by_name["E5M8 decode vs our fp32 export"].met is None
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
    assert json.loads((tmp_path / "b.json").read_text())["speed"][1]["decode_x_llama"] == pytest.approx(1.2)
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


def test_llama_goal_uses_the_fastest_llama_cpp_row(results):
    slow_threads = [r for r in results if r.runtime != "llama.cpp"] + [
        _r("llama.cpp", "llama.cpp", "Q4_1", None, 20.0),  # 2 threads collapsed on a loaded machine
        _r("llama.cpp 1 thread", "llama.cpp-1thread", "Q4_1", None, 150.0),
    ]
    goal = report.evaluate_goals(slow_threads, {}, {}, None, None)[0]
    assert goal.met is False and goal.measured == "0.80x (onnx fused vs llama.cpp 1 thread)"
    assert "vs llama.cpp: onnx fused 6.00x" in goal.detail
    # ratios in the table stay against the configured (2-thread) llama.cpp row
    rows = {(r["config"], r["precision"]): r for r in report.with_ratios(slow_threads)}
    assert rows[("onnx fused", "E5M3")]["decode_x_llama"] == pytest.approx(6.0)
