"""``otaro bench --quick`` end to end on a tiny model (ONNX only, no llama.cpp): numbers land in JSON/PNG.

No timing assertions: benchmarks never assert speed, only that every
configuration was measured and reported.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from otaro_export.bench.artifacts import ArtifactSpec, ensure_artifact, ensure_artifact_timed
from otaro_export.bench.configs import BenchSettings
from otaro_export.bench.runner import run_bench
from otaro_export.cli.main import app
from otaro_export.errors import OtaroError
from otaro_export.testing import tiny_causal_lm


def test_bench_quick_on_a_tiny_model(tmp_path):
    model_dir = tmp_path / "tiny"
    loaded = tiny_causal_lm(seed=0)
    loaded.model.save_pretrained(str(model_dir))
    loaded.tokenizer.save_pretrained(str(model_dir))
    out = tmp_path / "out"
    args = [
        "bench",
        "--quick",
        "--model",
        str(model_dir),
        "--targets",
        "onnx",
        "--no-llama-cpp",
        "--no-ort-genai",
        "--max-seq-len",
        "64",
        "--prompt",
        "Hi",
        "--new-tokens",
        "4",
        "--runs",
        "2",
        "--eval-samples",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["failures"] == []
    measured = {(r["config"], r["precision"]) for r in data["speed"]}
    assert measured == {("onnx fused", "E5M3"), ("onnx fused", "E5M8"), ("onnx fp32", "fp32")}
    for row in data["speed"]:
        assert row["decode_tok_s"] > 0 and row["peak_rss_mib"] > 0
        assert row["decode_x_anchor"] is None  # no anchor row asked for
        assert row["extra"]["schedule"] == "interleaved" and len(row["extra"]["decode_tok_s_runs"]) == 2
    assert data["schedule"]["decode"] == "interleaved" and len(data["schedule"]["orders"]) == 2
    assert sorted(data["schedule"]["orders"][0]) == ["onnx fp32 fp32", "onnx fused E5M3", "onnx fused E5M8"]
    dial = "onnx E5M3 decode vs E5M8 decode (the precision dial buys speed)"
    assert data["paired_ratios"][dial]["rounds"] == 2
    assert "schedule: interleaved, 2 rounds" in result.output
    assert data["switching"]["onnx fused"]["switch_ratio"] > 0
    # tiny llama: 2 layers x 7 linears, hidden 64; 9.125 bits/weight at rest for K = 64 multiples
    assert abs(data["sefp_storage"]["bytes_per_sefp_weight"] - 9.125 / 8) < 1e-9
    assert [r["precision"] for r in data["accuracy"]["untuned"]] == ["E5M3", "E5M8", "FP"]
    # the rules the accuracy run used, recorded and in its table's title
    assert data["accuracy_rules"] == {
        "untuned": {
            "reconstruction": "fitted",
            "exponent_rule": "search",
            "layer_floors": "auto",
            "int8_activations": 5,
            "lm_head": "sefp",
        }
    }
    assert "reconstruction fitted, exponents search, floors auto, int8 activations up to E5M5" in result.output
    goals = {g["name"]: g["met"] for g in data["goals"]}
    anchor_goal = "onnx E5M3 decode vs the best anchor (llama.cpp Q4_1 1/N threads, onnxruntime-genai int4)"
    assert goals[anchor_goal] is None  # not measured, and said so
    assert (out / "speed.png").is_file() and (out / "accuracy.png").is_file()
    assert "goals:" in result.output
    # each export's wall time, made by this run; no export-time goal (those are the ExecuTorch exports')
    assert set(data["exports"]) == {"onnx-sefp-fused", "onnx-fp32"}
    assert data["exports"]["onnx-sefp-fused"]["configs"] == ["onnx fused"]
    assert all(e["wall_s"] > 0 and e["cached"] is False for e in data["exports"].values())
    assert "export time (model load + export" in result.output and not any("export time" in g for g in goals)
    # --rerender derives the same report from bench.json without measuring
    rendered = CliRunner().invoke(app, ["bench", "--rerender", "-o", str(out)])
    assert rendered.exit_code == 0, rendered.output
    assert json.loads((out / "bench.json").read_text())["goals"] == data["goals"]
    assert "goals:" in rendered.output
    # the exports are cached: asking again exports nothing, and their recorded times come with them
    logged = []
    for spec in (ArtifactSpec("onnx", "sefp", "fused"), ArtifactSpec("onnx", "fp32")):
        ensure_artifact(spec, str(model_dir), 64, tmp_path / "cache", log=logged.append)
        timed = ensure_artifact_timed(spec, str(model_dir), 64, tmp_path / "cache", log=logged.append)[1]
        assert timed.cached is True and timed.wall_s == data["exports"][spec.name]["wall_s"]
    assert logged == []


def test_bench_rejects_a_prompt_longer_than_the_cache(tmp_path):
    model_dir = tmp_path / "tiny"
    loaded = tiny_causal_lm(seed=0)
    loaded.model.save_pretrained(str(model_dir))
    loaded.tokenizer.save_pretrained(str(model_dir))
    settings = BenchSettings(
        model=str(model_dir),
        targets=("onnx",),
        portable=False,
        llama_cpp=False,
        accuracy=False,
        max_seq_len=16,
        new_tokens=4,
        cache_dir=tmp_path / "cache",
        output=tmp_path / "out",
    )
    with pytest.raises(OtaroError, match="exceed --max-seq-len 16"):
        run_bench(settings, log=lambda _: None)
