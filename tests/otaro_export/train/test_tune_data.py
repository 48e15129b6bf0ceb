import json

import pytest

from otaro_export.train.tune_data import (
    DataError,
    Dropped,
    Sample,
    batch_indices,
    collate,
    data_fingerprint,
    key_differences,
    load_samples,
    load_saved_samples,
    read_saved_samples,
    save_samples,
    self_distillation_samples,
)


def test_jsonl_records_of_every_supported_shape(tiny, tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [
        {"text": "plain text, every next token is scored"},
        {"prompt": "Q?", "response": "A."},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    samples = load_samples(path, tiny.tokenizer, seq_len=64)
    assert len(samples) == 3
    text, chat, msgs = samples
    assert text.target_start == 1 and msgs.target_start == 1
    answer = tiny.tokenizer("A.", add_special_tokens=False)["input_ids"]
    # Only the answer (and its end-of-turn token) is scored for prompt/response records.
    assert list(chat.ids[chat.target_start :]) == answer + [tiny.tokenizer.eos_token_id]


def test_text_file_is_chunked_and_max_samples_respected(tiny, tmp_path):
    path = tmp_path / "book.txt"
    path.write_text("abcdefghij" * 10)  # 100 byte tokens
    samples = load_samples(path, tiny.tokenizer, seq_len=30)
    assert [len(s.ids) for s in samples] == [30, 30, 30, 10]
    assert len(load_samples(path, tiny.tokenizer, seq_len=30, max_samples=2)) == 2


def test_directory_of_jsonl_files(tiny, tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "a.jsonl").write_text(json.dumps({"text": "hello world"}) + "\n")
    assert len(load_samples(tmp_path, tiny.tokenizer)) == 1


def test_bad_data_gives_clear_errors(tiny, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_samples(tmp_path / "missing.jsonl", tiny.tokenizer)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2"):
        load_samples(bad, tiny.tokenizer)
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"question": "?"}) + "\n")
    with pytest.raises(DataError, match="'text' field"):
        load_samples(odd, tiny.tokenizer)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(DataError, match="no usable samples"):
        load_samples(empty, tiny.tokenizer)
    (tmp_path / "hfds").mkdir()
    (tmp_path / "hfds" / "dataset_info.json").write_text("{}")
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="datasets"):
            load_samples(tmp_path / "hfds", tiny.tokenizer)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match="unsupported"):
        load_samples(tmp_path / "x.parquet", tiny.tokenizer)


def test_self_distillation_is_seeded_and_scores_only_answers(tiny):
    a = self_distillation_samples(tiny.model, tiny.tokenizer, 3, max_new_tokens=6, seed=1, batch_size=2)
    b = self_distillation_samples(tiny.model, tiny.tokenizer, 3, max_new_tokens=6, seed=1, batch_size=2)
    c = self_distillation_samples(tiny.model, tiny.tokenizer, 3, max_new_tokens=6, seed=2, batch_size=2)
    assert a == b and a != c
    for s in a:
        prompt = tiny.tokenizer.decode(list(s.ids[: s.target_start]))
        assert prompt.endswith("<|im_start|>assistant\n")
        assert 1 <= len(s.ids) - s.target_start <= 6


def test_collate_masks_scored_positions():
    samples = [Sample((1, 2, 3, 4, 5), 3), Sample((6, 7, 8), 1)]
    batch = collate(samples, [0, 1])
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    # logits at position t predict token t+1: sample 0 scores tokens 3..4 (positions 2, 3).
    assert batch.loss_mask.tolist() == [[False, False, True, True, False], [True, True, False, False, False]]


def test_batch_indices_are_a_pure_function_of_step():
    epoch0 = [batch_indices(10, 3, s, seed=0) for s in range(3)]
    assert sorted(sum(epoch0, [])) == sorted(set(sum(epoch0, [])))  # no repeats within an epoch
    assert batch_indices(10, 3, 4, seed=0) == batch_indices(10, 3, 4, seed=0)
    assert epoch0 != [batch_indices(10, 3, s, seed=1) for s in range(3)]


def test_saved_samples_round_trip_and_corruption(tmp_path):
    samples = [Sample((1, 2, 3), 1)]
    save_samples(samples, tmp_path / "s.json")
    assert load_saved_samples(tmp_path / "s.json") == samples
    (tmp_path / "s.json").write_text("[{]")
    with pytest.raises(DataError, match="unreadable"):
        load_saved_samples(tmp_path / "s.json")


def test_json_array_file(tiny, tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"text": "one two"}, {"prompt": "p", "completion": "c"}]))
    assert len(load_samples(path, tiny.tokenizer)) == 2
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="objects"):
        load_samples(path, tiny.tokenizer)


def test_errors_name_prompts_that_do_not_fit_seq_len(tiny, tmp_path):
    path = tmp_path / "long.jsonl"
    rows = [{"prompt": "a long question " * 4, "response": "ok"}, {"prompt": "another long one " * 4, "response": "ok"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(
        DataError, match=r"2 prompt\(s\) of \d+-\d+ tokens .* --seq-len 16 \(raise --seq-len above \d+\)"
    ):
        load_samples(path, tiny.tokenizer, seq_len=16)
    dropped = Dropped(128)
    assert len(load_samples(path, tiny.tokenizer, seq_len=128, dropped=dropped)) == 2 and dropped.total == 0
    path.write_text(path.read_text() + json.dumps({"prompt": "hi", "response": "hello"}) + "\n")
    dropped = Dropped(48)
    assert len(load_samples(path, tiny.tokenizer, seq_len=48, dropped=dropped)) == 1
    assert dropped.counts["prompt"] == 2 and "raise --seq-len above" in dropped.describe()


def test_sample_cache_carries_its_key_and_refuses_empty(tmp_path):
    samples = [Sample((1, 2, 3), 1), Sample((4, 5), 1)]
    key = {"seq_len": 64, "data": {"path": "/x", "files": "abc"}}
    save_samples(samples, tmp_path / "s.json", key)
    assert read_saved_samples(tmp_path / "s.json") == (samples, key)
    assert key_differences(key, key) == []
    assert key_differences(key, {**key, "seq_len": 32}) == ["seq_len"]
    (tmp_path / "old.json").write_text(json.dumps([s.to_json() for s in samples]))  # first format: no key
    assert read_saved_samples(tmp_path / "old.json") == (samples, None)
    assert key_differences(None, key) != []
    with pytest.raises(DataError, match="empty"):
        save_samples([], tmp_path / "e.json", key)
    assert not (tmp_path / "e.json").exists()


def test_data_fingerprint_changes_with_the_data(tmp_path):
    path = tmp_path / "d.txt"
    path.write_text("one")
    before = data_fingerprint(path)
    assert data_fingerprint(path) == before
    path.write_text("one two")
    assert data_fingerprint(path) != before
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.jsonl").write_text("{}")
    first = data_fingerprint(tmp_path / "dir")
    (tmp_path / "dir" / "b.jsonl").write_text("{}")
    assert data_fingerprint(tmp_path / "dir") != first
