"""``otaro bench --quick`` end to end on a tiny model (ONNX only, no llama.cpp): numbers land in JSON/PNG.

No timing assertions: benchmarks never assert speed, only that every
configuration was measured and reported.
"""

from __future__ import annotations

import json

from typer.testing import CliRunner

from otaro_export.cli.main import app
from otaro_export.testing import tiny_causal_lm


def test_bench_quick_on_a_tiny_model(tmp_path):
    model_dir = tmp_path / "tiny"
    loaded = tiny_causal_lm(seed=0)
    loaded.model.save_pretrained(str(model_dir))
    loaded.tokenizer.save_pretrained(str(model_dir))
    out = tmp_path / "out"
    args = ["bench", "--quick", "--model", str(model_dir), "--targets", "onnx", "--no-llama-cpp", "--max-seq-len", "64",
            "--new-tokens", "4", "--runs", "1", "--eval-samples", "1", "--cache-dir", str(tmp_path / "cache"), "-o", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "bench.json").read_text())
    assert data["failures"] == []
    measured = {(r["config"], r["precision"]) for r in data["speed"]}
    assert measured == {("onnx fused", "E5M3"), ("onnx fused", "E5M8"), ("onnx fp32", "fp32")}
    for row in data["speed"]:
        assert row["decode_tok_s"] > 0 and row["peak_rss_mib"] > 0
        assert row["decode_x_llama"] is None  # no llama.cpp row asked for
    assert data["switching"]["onnx fused"]["switch_ratio"] > 0
    # tiny llama: 2 layers x 7 linears, hidden 64; 9.125 bits/weight at rest for K = 64 multiples
    assert abs(data["sefp_storage"]["bytes_per_sefp_weight"] - 9.125 / 8) < 1e-9
    assert [r["precision"] for r in data["accuracy"]["untuned"]] == ["E5M3", "E5M8", "FP"]
    goals = {g["name"]: g["met"] for g in data["goals"]}
    assert goals["E5M3 decode vs llama.cpp Q4_1"] is None  # not measured, and said so
    assert (out / "speed.png").is_file() and (out / "accuracy.png").is_file()
    assert "goals:" in result.output
    # a second run reuses the cached exports (no "exporting" line)
    again = CliRunner().invoke(app, args + ["--no-accuracy"])
    assert again.exit_code == 0, again.output
    assert "exporting" not in again.output
