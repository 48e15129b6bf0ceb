import numpy as np
import pytest

from otaro_export.demo.harness import choice_ids, run_demo, score_options
from otaro_export.demo.policy import parse_policy
from otaro_export.demo.tasks import Task
from otaro_export.demo.toml_io import DemoConfigError

TASKS = [
    Task("pick", "choose", "which?", options=("a", "b", "c")),
    Task("write", "generate", "hello", max_new_tokens=3),
]
POLICY = parse_policy({"kinds": {"choose": "E5M3", "generate": "E5M8"}}, "p.toml")


def test_score_options_matches_a_direct_log_softmax(fake_session):
    session = fake_session(favourite="b")
    best, scores, tokens = score_options(session, TASKS[0], 3)
    assert best == "b"
    # The fake puts logit 5 on "b" and 0 on the other 258 ids at every position.
    z = np.log(np.exp(5.0) + 258)
    assert scores["b"] == pytest.approx(5.0 - z)
    assert scores["a"] == pytest.approx(-z)
    assert tokens == 3 * (len(session.encode_prompt("which?")) + 1)
    assert set(session.bits_seen) == {3}


def test_options_are_scored_after_the_answer_prefix(fake_session):
    session = fake_session(favourite="b")
    task = Task("pick", "choose", "which?", options=("a", "b"), answer_prefix="it is")
    context, options = choice_ids(session, task)
    prefix = session.tokenizer("it is", add_special_tokens=False)["input_ids"]
    assert context == session.encode_prompt("which?", chat=True) + prefix
    # the option continues the prefix: tokenized with the separating space
    assert options == [session.tokenizer(" " + o, add_special_tokens=False)["input_ids"] for o in ("a", "b")]
    best, scores, tokens = score_options(session, task, 4)
    # every position favours "b" (logit 5 of 259): an option's mean log-prob averages over its own tokens
    z = np.log(np.exp(5.0) + 258)
    favourite = session.favourite_id
    for option, ids in zip(task.options, options):
        assert scores[option] == pytest.approx(np.mean([(5.0 if i == favourite else 0.0) - z for i in ids]))
    assert best == max(task.options, key=scores.get)
    assert tokens == sum(len(context) + len(ids) for ids in options)


def test_every_task_runs_at_its_policy_precision_with_one_load(fake_session):
    loads, lines = [], []
    session = fake_session(favourite="b")

    def loader(path):
        loads.append(path)
        return session

    report = run_demo("model.onnx", POLICY, TASKS, echo=lines.append, loader=loader)
    assert loads == ["model.onnx"]
    assert [(r.name, r.bits) for r in report.results] == [("pick", 3), ("write", 8)]
    # 3 option forwards at E5M3, then 1 prefill + 2 decode steps at E5M8 (the fake never emits eos).
    assert session.bits_seen == [3, 3, 3, 8, 8, 8]
    assert report.results[1].answer == "bbb" and report.results[1].tokens == 3
    assert report.single_session and report.loads == 1
    out = "\n".join(lines)
    assert "pick" in out and "E5M3" in out and "E5M8" in out and "1 load" in out
    assert f"0x{id(session):x}" in out


def test_precision_the_artifact_does_not_serve_fails_before_any_task(fake_session):
    session = fake_session(precisions=(4, 5, 6, 7, 8))
    with pytest.raises(DemoConfigError, match="'pick' at E5M3, but this artifact serves E5M4"):
        run_demo("m.onnx", POLICY, TASKS, echo=lambda _: None, loader=lambda _: session)
    assert session.bits_seen == []


def test_prompt_longer_than_the_context_is_a_clear_error(fake_session):
    session = fake_session(max_seq_len=16)
    with pytest.raises(DemoConfigError, match="task 'pick' needs .* max_seq_len is 16"):
        run_demo("m.onnx", POLICY, TASKS, echo=lambda _: None, loader=lambda _: session)


def test_bad_policy_fails_before_loading():
    bad = parse_policy({"default": 8, "tasks": {"nope": 3}}, "p.toml")

    def loader(_):
        raise AssertionError("must not load")

    with pytest.raises(DemoConfigError, match="unknown task name"):
        run_demo("m.onnx", bad, TASKS, echo=lambda _: None, loader=loader)
