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


def _memory_line(text: str, prec: str) -> list[str]:
    table = text.split("memory per precision", 1)[1]
    return next(line for line in table.splitlines() if line.startswith(prec)).split()


def test_the_memory_table_reads_each_layer_at_its_recorded_floor(tmp_path):
    payload = json.loads((DATA / "bench_sequential.json").read_text())
    # two equal layers, one floored at E5M5: E5M3 reads (4.125 + 6.125) / 2 bits per weight, as the accuracy
    # table's floor plan counts them
    floors = {"model.layers.0.mlp.down_proj": 5}
    layers = {"model.layers.0.mlp.down_proj": [1024, 4096], "model.layers.0.mlp.gate_up_proj": [1024, 4096]}
    payload["sefp_storage"].update(layers=layers, precision_floors=floors)
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    text = rerender(tmp_path)["text"]
    assert _memory_line(text, "E5M3")[1:3] == ["5.125", "5.1"]  # bits/w read, MiB read per token
    assert _memory_line(text, "E5M8")[1:3] == ["9.125", "9.1"]
    assert "predates" not in text
    # a bench.json from before the floors were recorded still renders, and says what its numbers leave out
    shutil.copy(DATA / "bench_sequential.json", tmp_path / "bench.json")
    text = rerender(tmp_path)["text"]
    assert _memory_line(text, "E5M3")[1:3] == ["4.125", "66.1"]  # 134,479,872 weights at 4.125 bits
    assert "without precision floors: this bench.json predates their record" in text


def test_sefp_storage_records_each_layers_size_and_the_manifests_floors(tmp_path):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from otaro_export.bench.runner import sefp_storage_from_onnx

    def planes(name, rows, k):
        groups = k // 64
        shapes = {"p0": 32, "p1": 16, "p2": 16, "p3": 8, "exponents": 1}
        return [
            numpy_helper.from_array(np.zeros((rows, groups * w), np.uint8), f"{name}.sefp_{p}")
            for p, w in shapes.items()
        ]

    names = {"model.layers.0.mlp.down_proj": (64, 128), "lm_head": (32, 64)}
    inits, nodes = [], []
    for i, (name, (rows, k)) in enumerate(names.items()):
        inits += planes(name, rows, k)
        inputs = ["x", *(t.name for t in inits[-5:]), "bits"]
        nodes.append(helper.make_node("SEFPLinear", inputs, [f"y{i}"], domain="ai.otaro"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("x", "bits")],
        [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, None) for i in range(2)],
        inits,
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "model.onnx"))
    floors = {"lm_head": 6}
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {"precision_floors": floors}}))
    storage = sefp_storage_from_onnx(tmp_path / "model.onnx")
    assert storage["layers"] == {"model.layers.0.mlp.down_proj": [64, 128], "lm_head": [32, 64]}
    assert storage["precision_floors"] == floors and storage["sefp_weights"] == 64 * 128 + 32 * 64
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {}}))  # an export without floors
    assert sefp_storage_from_onnx(tmp_path / "model.onnx")["precision_floors"] == {}


def test_the_accuracy_tables_say_which_rules_each_run_used(tmp_path):
    payload = json.loads((DATA / "bench_sequential.json").read_text())
    payload["accuracy"]["tuned"] = payload["accuracy"]["untuned"]
    untuned = {"reconstruction": "fitted", "exponent_rule": "search", "layer_floors": "auto", "int8_activations": 5}
    untuned["lm_head"] = "sefp"
    tuned = {**untuned, "reconstruction": "center", "exponent_rule": "floor", "int8_activations": 0}
    tuned.update(checkpoint="ckpt-000240", step=240, from_run=["reconstruction", "exponent_rule", "int8_activations"])
    payload["accuracy_rules"] = {"untuned": untuned, "tuned": tuned}
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    text = rerender(tmp_path)["text"]
    untuned_title, tuned_title = (
        text.split(f"accuracy, {name} (747 scored tokens)\n", 1)[1] for name in payload["accuracy"]
    )
    assert untuned_title.startswith(
        "  reconstruction fitted, exponents search, floors auto, int8 activations up to E5M5, lm_head sefp\n"
    )
    assert tuned_title.startswith(
        "  ckpt-000240 (step 240): reconstruction center (as tuned), exponents floor (as tuned), floors auto, "
        "int8 activations off (as tuned), lm_head sefp\n"
    )
    assert json.loads((tmp_path / "bench.json").read_text())["accuracy_rules"] == payload["accuracy_rules"]
    # a bench.json from before the rules were recorded: its tuned row ran through the export defaults, and says so
    del payload["accuracy_rules"]
    (tmp_path / "bench.json").write_text(json.dumps(payload))
    text = rerender(tmp_path)["text"]
    assert "its rules were not recorded" in text.split("accuracy, tuned", 1)[1]
    assert "rules were not recorded" not in text.split("accuracy, tuned", 1)[0]
