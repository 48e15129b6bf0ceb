"""``otaro demo`` end to end on a real exported tiny artifact: one load, every task at its precision.

The tiny model is random, so answers mean nothing; what is checked is the contract:
one load, each task run at its policy precision by the artifact, results equal to
a torch reference over the artifact's own stored bits at the same precisions.
"""

from __future__ import annotations

import importlib.util
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from otaro_export.cli.main import app
from otaro_export.demo import load_policy, load_tasks, run_demo

REPO = Path(__file__).resolve().parents[3]
TARGETS = {"onnx": "otaro_export.export.onnx_export", "executorch": "otaro_export.export.executorch_export"}
MAX_SEQ_LEN = 256  # the built-in prompts are <= 190 byte-level tokens with the chat template


def _exported(tmp_path_factory, target: str):
    if importlib.util.find_spec(TARGETS[target]) is None:
        pytest.skip(f"the {target} exporter ({TARGETS[target]}) is not in this build yet")
    from otaro_export.export.pipeline import ExportOptions, export_model
    from otaro_export.testing import tiny_causal_lm

    out = tmp_path_factory.mktemp(f"demo_{target}")
    export_model(
        ExportOptions(target=target, output=out, max_seq_len=MAX_SEQ_LEN), log=lambda _: None, loaded=tiny_causal_lm()
    )
    return out


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    return _exported(tmp_path_factory, "onnx")


@pytest.fixture
def counted_load(monkeypatch):
    """Count runtime.load calls and record the bits of every backend step, per session."""
    from otaro_export import runtime

    real_load = runtime.load
    loads, steps = [], []

    def load(path, **options):
        session = real_load(path, **options)
        loads.append(session)
        real_step = session._step

        def step(ids, start_pos, bits, **kwargs):
            steps.append(int(bits))
            return real_step(ids, start_pos, bits, **kwargs)

        session._step = step
        return session

    monkeypatch.setattr(runtime, "load", load)
    return loads, steps


def _reference_report(directory):
    """The demo run by a torch session over the artifact's own stored bits (export/onnx_reference.py)."""
    import torch

    from otaro_export.export.onnx_reference import reference_decoder, reference_logits
    from otaro_export.manifest import Manifest
    from otaro_export.runtime.session import Session
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm()  # seed 0: the model that was exported

    class ArtifactReference(Session):
        # No KV cache: each step recomputes the whole sequence so far (tiny model, short tasks).
        def __init__(self):
            super().__init__(directory, Manifest.load(directory), loaded.tokenizer)
            self._bits, self._decoder, self._seen = None, None, []

        @property
        def max_seq_len(self) -> int:
            return MAX_SEQ_LEN

        def _reset(self) -> None:
            self._seen = []

        def _step(self, ids, start_pos, bits, last_only=False):
            assert start_pos == len(self._seen)
            self._seen += ids[0].tolist()
            if bits != self._bits:  # decoders share the source model's parameters: one precision at a time
                self._bits, self._decoder = bits, reference_decoder(directory, loaded.model, bits)
            logits = reference_logits(self._decoder, torch.tensor([self._seen])).numpy()
            return logits[:, -1:] if last_only else logits[:, -ids.shape[1] :]

    session = ArtifactReference()
    return run_demo("artifact-reference", load_policy(), load_tasks(), echo=lambda _: None, loader=lambda _: session)


def test_onnx_demo_one_load_each_task_at_its_precision(onnx_artifact, counted_load, tmp_path):
    loads, steps = counted_load
    artifact = next(p for p in onnx_artifact.iterdir() if p.suffix == ".onnx")
    result = CliRunner().invoke(app, ["demo", str(artifact), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 0, result.output
    assert len(loads) == 1, "the demo must load the artifact exactly once"
    report = json.loads((tmp_path / "report.json").read_text())
    plan = {t.name: b for t, b in load_policy().plan(load_tasks())}
    assert {r["name"]: r["bits"] for r in report["results"]} == plan
    assert report["single_session"] and report["session_id"] == id(loads[0])
    # Every backend step ran at a precision the policy asked for, and each of them was used.
    assert set(steps) == set(plan.values())
    for r in report["results"]:
        assert f"{r['name']:<14} {r['kind']:<8} {r['precision']}" in result.output

    # Same answers as the torch reference at the same precisions. The mean log-probs agree
    # to 1e-3: ONNX Runtime and torch differ by float32 summation order only (~1e-5 on
    # these logits), and a 1e-3 gap is far below the gaps between options. Where int8
    # activations apply (docs/FORMAT.md §9), that order can move an activation on a rounding
    # boundary of fq to the next grid point (one step, a / 127, on one input): ~2e-3 measured here.
    reference = {r.name: r for r in _reference_report(onnx_artifact).results}
    for r in report["results"]:
        ref = reference[r["name"]]
        assert r["answer"] == ref.answer, r["name"]
        for option, score in r["scores"].items():
            assert np.isclose(score, ref.scores[option], atol=_score_atol(onnx_artifact, r["bits"])), (
                r["name"],
                option,
            )


def test_mobile_bundle_runs_like_the_runtime(onnx_artifact, tmp_path):
    """The apps' logic (examples/mobile/bundle_runner.py, stock onnxruntime) gives the runtime's answers."""
    from otaro_export import runtime

    result = CliRunner().invoke(app, ["demo", str(onnx_artifact), "--write-mobile-bundle", str(tmp_path / "bundle")])
    assert result.exit_code == 0, result.output
    runner = runpy.run_path(str(REPO / "examples" / "mobile" / "bundle_runner.py"))
    app_results = runner["run_bundle"](tmp_path / "bundle", echo=lambda _: None)
    session = runtime.load(onnx_artifact)
    report = run_demo(onnx_artifact, load_policy(), load_tasks(), echo=lambda _: None, loader=lambda _: session)
    assert [(r["name"], r["bits"]) for r in app_results] == [(r.name, r.bits) for r in report.results]
    for mine, ref in zip(app_results, report.results):
        assert mine["answer"] == ref.answer, mine["name"]
        # Stock ORT runs SEFPLinear's function body; the runtime may use the fused kernel:
        # the same exact weights, summed in another order (see the bounds above).
        for option, score in mine["scores"].items():
            atol = _score_atol(onnx_artifact, mine["bits"])
            assert np.isclose(score, ref.scores[option], atol=atol), (mine["name"], option)


def _score_atol(directory, bits: int) -> float:
    """1e-3, or 1e-2 at the precisions that run with int8 activations (see the comment in the test above)."""
    from otaro_export.manifest import Manifest

    int8_max = int(Manifest.load(directory).extra.get("sefp_recipe", {}).get("int8_activations", 0))
    return 1e-2 if bits <= int8_max else 1e-3


def _json_keys(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _json_keys(v)}
    if isinstance(value, list):
        return {k for v in value[:50] for k in _json_keys(v)}  # token_bytes alone is ~50k strings
    return set()


def test_app_sources_read_only_keys_the_bundle_has(onnx_artifact, tmp_path):
    """The Android and iOS apps cannot be built here: at least their JSON keys must match the format."""
    import re

    result = CliRunner().invoke(app, ["demo", str(onnx_artifact), "--write-mobile-bundle", str(tmp_path)])
    assert result.exit_code == 0, result.output
    keys = _json_keys(json.loads((tmp_path / "demo_bundle.json").read_text()))
    kotlin = (REPO / "examples/android/app/src/main/java/dev/otaro/demo/DemoBundle.kt").read_text()
    kotlin_keys = set(
        re.findall(r'(?:get|opt)(?:String|Int|Long|JSONArray|JSONObject)\("(\w+)"\)|isNull\("(\w+)"\)', kotlin)
    )
    kotlin_keys = {a or b for a, b in kotlin_keys}
    swift = (REPO / "examples/ios/OtaroDemo/DemoBundle.swift").read_text()
    # Decodable stored properties, decoded with .convertFromSnakeCase (computed `var id` excluded).
    swift_keys = {re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower() for name in re.findall(r"^\s+let (\w+):", swift, re.M)}
    assert len(kotlin_keys) > 15 and len(swift_keys) > 15
    assert kotlin_keys <= keys, kotlin_keys - keys
    assert swift_keys <= keys, swift_keys - keys
