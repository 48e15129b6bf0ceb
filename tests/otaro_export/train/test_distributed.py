"""Tuning on several processes (gloo on CPU, tiny model): DDP and FSDP2 reach one process's weights, and resume across world sizes.

Two torchrun starts serve every test here (each start costs ~10-20 s of imports per rank):
a DDP start runs a full 2-rank run and a 2-rank run killed after step 5; the CLI under
torchrun resumes a killed 1-process run on 2 FSDP ranks.

Tolerance. The runs differ from one process only in the order of float32 additions: each
rank sums its share of the tokens and the shares are added across ranks (loss, gradients).
That changes a gradient by a few float32 ulps (relative ~1e-7); SGD with momentum moves
the weights linearly in the gradients, so after 8 steps the weights may differ by about
lr * steps * |grad| * 1e-7 / (1 - momentum), below 1e-7 here (measured: max 6e-8). The tests
allow ATOL = 1e-6 on weights of magnitude ~0.1-0.5, and check that tuning moved them by more
than 1000 * ATOL, so the comparison is not trivially met. (Adam is not used here: it divides by
sqrt(v), which turns reduction noise on near-zero gradients into updates of order lr.)
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from otaro_export.testing import tiny_causal_lm
from otaro_export.train.checkpoint import load_tuned_weights, read_training_state, read_weights, resolve_checkpoint
from otaro_export.train.trainer import METRICS_FILE, SUMMARY_FILE, Tuner
from otaro_export.train.tune_config import TuneConfig

WORKER = Path(__file__).with_name("dist_worker.py")
UNTIED = dict(teacher_cache_bytes=0)  # no log-prob cache: the FP teacher is a frozen model copy
ATOL = 1e-6
STEPS = 8
_QA = (
    ("What is the sky?", "The sky is the air above us, blue by day."),
    ("Name a fruit.", "An apple is a fruit."),
    ("Say hi.", "Hi there, nice to meet you!"),
    ("Count to five.", "One, two, three, four, five."),
    ("What is water?", "Water is a clear liquid we drink."),
    ("Give a color.", "Green, like grass in spring."),
    ("Where do fish live?", "Fish live in water: rivers, lakes, seas."),
    ("What is snow?", "Frozen water falling from clouds."),
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("dist")
    for name, tied in (("model", True), ("untied", False)):
        loaded = tiny_causal_lm(seed=0, tie_word_embeddings=tied)
        loaded.model.save_pretrained(str(path / name))
        loaded.tokenizer.save_pretrained(str(path / name))
    (path / "data.jsonl").write_text("".join(json.dumps({"prompt": p, "response": r}) + "\n" for p, r in _QA))
    return path


def _config(root: Path, model: str = "model", **overrides) -> dict:
    # BPS + LAA (interval 2: delayed updates happen), global batch 4 = 2 samples per rank.
    return dict(
        model=str(root / model),
        data=str(root / "data.jsonl"),
        method="otaro",
        steps=STEPS,
        batch_size=4,
        seq_len=64,
        num_samples=8,
        laa_interval=2,
        optimizer="sgd",
        lr=0.05,
        momentum=0.9,
        checkpoint_every=4,
        seed=3,
        **overrides,
    )


def _one_process(root: Path, output: Path, stop_after: int | None = None, resume: bool = False, **overrides):
    class Killed(Exception):
        pass

    def on_step(step):
        if step == stop_after:
            raise Killed

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: same kernels, so only the reduction order differs
    try:
        Tuner(TuneConfig(**_config(root, **overrides)), progress=False, log=lambda line: None).run(
            output, resume, on_step
        )
    except Killed:
        pass
    finally:
        torch.set_num_threads(threads)


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def _result(output: Path):
    checkpoint = resolve_checkpoint(output)
    return read_weights(checkpoint), read_training_state(checkpoint)["history"]


def _assert_same_run(a: Path, b: Path):
    (wa, ha), (wb, hb) = _result(a), _result(b)
    assert [h["bits"] for h in ha] == [h["bits"] for h in hb]  # every step picked the same bit-width
    assert [h["applied"] for h in ha] == [h["applied"] for h in hb]  # LAA delayed the same steps
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)
    assert sorted(wa) == sorted(wb)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=0, atol=ATOL, msg=name)


@pytest.fixture(scope="module")
def baseline(root):
    _one_process(root, root / "one")
    return root / "one"


@pytest.fixture(scope="module")
def ddp_runs(root):
    """One torchrun start, three jobs: a full 2-rank DDP run, one killed after step 5 (checkpoint at 4),
    and a 2-rank FSDP run of a model with untied embeddings (each one a unit of its own, as for Llama 3-8B)
    and a teacher too large to cache (a frozen copy, sharded too, runs every step).
    The last two recompute every block in backward (--activation-checkpointing), which must change nothing."""
    recompute = dict(activation_checkpointing=True)
    untied = _config(root, "untied", parallel="fsdp", **UNTIED, **recompute)
    jobs = [
        {"config": _config(root, parallel="ddp"), "output": str(root / "ddp")},
        {"config": _config(root, parallel="ddp", **recompute), "output": str(root / "ddp-killed"), "stop_after": 5},
        {"config": untied, "output": str(root / "fsdp-untied")},
    ]
    (root / "ddp-jobs.json").write_text(json.dumps(jobs))
    _torchrun([str(WORKER), str(root / "ddp-jobs.json")], root)
    return root / "ddp", root / "ddp-killed"


def test_two_ddp_ranks_reach_the_weights_of_one_process(baseline, ddp_runs):
    ddp, _ = ddp_runs
    _assert_same_run(ddp, baseline)
    untuned = dict(tiny_causal_lm(seed=0).model.named_parameters())
    weights, history = _result(baseline)
    moved = max(float((weights[n] - untuned[n].detach()).abs().max()) for n in weights)
    assert moved > 1000 * ATOL
    assert not all(h["applied"] for h in history) and {3, 4} <= {h["bits"] for h in history}
    summary = json.loads((ddp / SUMMARY_FILE).read_text())
    assert (summary["world_size"], summary["parallel"]) == (2, "ddp") and summary["tokens_per_second"] > 0
    plain = tiny_causal_lm(seed=0).model  # what otaro-export --checkpoint does with a 2-rank run's output
    tuned, _ = _result(ddp)
    assert load_tuned_weights(plain, ddp) == sorted(tuned)
    assert all(torch.equal(plain.get_parameter(n), tuned[n]) for n in tuned)
    metrics = [json.loads(line) for line in (ddp / METRICS_FILE).read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(STEPS)) and all(m["tok_s"] > 0 for m in metrics)


def test_one_process_resumes_a_killed_two_rank_run(root, baseline, ddp_runs):
    _, killed = ddp_runs
    assert resolve_checkpoint(killed).name == "ckpt-000004"  # step 5 was lost with the kill
    _one_process(root, killed, resume=True)
    _assert_same_run(killed, baseline)


def test_two_fsdp_ranks_resume_a_killed_one_process_run_under_the_cli(root, baseline, ddp_runs):
    killed = root / "one-killed"
    _one_process(root, killed, stop_after=5)
    assert resolve_checkpoint(killed).name == "ckpt-000004"
    done = _torchrun(
        ["--no-python", str(Path(sys.executable).with_name("otaro")), "tune", "--output", str(killed), "--resume"]
        + ["--parallel", "fsdp"],
        root,
    )
    assert "resumed from ckpt-000004 at step 4" in done.stdout
    assert done.stdout.count("tuned 8 steps") == 1  # only rank 0 reports
    _assert_same_run(killed, baseline)
    _assert_same_run(killed, ddp_runs[0])  # FSDP and DDP agree
    summary = json.loads((killed / SUMMARY_FILE).read_text())
    assert (summary["world_size"], summary["parallel"]) == (2, "fsdp")


def test_fsdp_shards_untied_embeddings_and_a_live_teacher_and_matches_one_process(root, ddp_runs):
    _one_process(root, root / "one-untied", model="untied", **UNTIED)
    _assert_same_run(root / "fsdp-untied", root / "one-untied")
    weights, _ = _result(root / "fsdp-untied")
    assert "lm_head.weight" not in weights  # only the SEFP linears are trained (--train-scope linears)
