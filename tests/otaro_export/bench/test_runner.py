"""The bench report of a finished run: rerendering an older (sequential) and an interleaved bench.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from otaro_export.bench.runner import rerender

DATA = Path(__file__).resolve().parent / "data"


def test_rerender_of_a_sequential_bench_json(tmp_path):
    # recorded 2026-12-01 before interleaving (trimmed to E5M3/E5M8): no "schedule", no paired ratios
    shutil.copy(DATA / "bench_sequential.json", tmp_path / "bench.json")
    recorded = json.loads((DATA / "bench_sequential.json").read_text())
    payload = rerender(tmp_path)
    assert "schedule: sequential" in payload["text"] and "interleaved" not in payload["text"]
    assert payload["paired_ratios"] == {}
    old = {g["name"]: (g["measured"], g["met"]) for g in recorded["goals"]}
    new = {g["name"]: (g["measured"], g["met"]) for g in payload["goals"]}
    assert new == old  # same verdicts and numbers as when it was recorded
    assert (tmp_path / "bench.txt").read_text().startswith("otaro bench, started 2026-12-01 16:33:49")


def test_rerender_of_an_interleaved_bench_json(tmp_path):
    payload = json.loads((DATA / "bench_sequential.json").read_text())
    for row in payload["speed"]:  # pretend its three runs were three rounds
        row["extra"]["schedule"] = "interleaved"
    payload["schedule"] = {"decode": "interleaved", "rounds": 3, "orders": [], "sequential": []}
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    out = rerender(tmp_path)
    assert "schedule: interleaved, 3 rounds" in out["text"]
    dial = "onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"
    assert out["paired_ratios"][dial]["rounds"] == 3
    assert "paired median of 3 rounds" in next(g["measured"] for g in out["goals"] if g["name"] == dial)
    again = rerender(tmp_path)  # the rewritten bench.json rerenders to the same report
    assert again["goals"] == out["goals"] and again["text"].splitlines()[1:] == out["text"].splitlines()[1:]
