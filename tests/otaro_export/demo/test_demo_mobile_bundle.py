"""Mobile bundle pieces that need no exported artifact (the end-to-end bundle test: test_demo_e2e.py)."""

from types import SimpleNamespace

import pytest

from otaro_export.demo.mobile_bundle import describe_io
from otaro_export.demo.token_bytes import token_bytes_table
from otaro_export.demo.toml_io import DemoConfigError
from otaro_export.testing import tiny_tokenizer


def fake_ort(inputs: dict, outputs: list):
    return SimpleNamespace(
        get_inputs=lambda: [SimpleNamespace(name=n, shape=s) for n, s in inputs.items()],
        get_outputs=lambda: [SimpleNamespace(name=n) for n in outputs],
    )


MANIFEST = SimpleNamespace(model={"num_kv_heads": 2, "head_dim": 16})
KV_INPUTS = {
    "input_ids": [1, "s"],
    "cache_position": ["s"],
    "bits": [],
    "past_key_0": [1, 2, "p", 16],
    "past_value_0": [1, 2, "p", 16],
}


def test_roles_and_cache_pairs():
    io = describe_io(fake_ort(KV_INPUTS, ["logits", "present_key_0", "present_value_0"]), MANIFEST)
    assert io["position"] == {"name": "cache_position", "rank": 1} and io["attention_mask"] is None
    assert [(c["input"], c["output"], c["empty_shape"], c["seq_axis"]) for c in io["cache"]] == [
        ("past_key_0", "present_key_0", [1, 2, 0, 16], 2),
        ("past_value_0", "present_value_0", [1, 2, 0, 16], 2),
    ]


def test_full_sequence_model_without_cache():
    io = describe_io(fake_ort({"input_ids": [1, "s"], "bits": []}, ["logits"]), MANIFEST)
    assert io["cache"] == [] and io["position"] is None


def test_missing_bits_input_is_an_error():
    with pytest.raises(DemoConfigError, match="needs inputs 'input_ids' and 'bits'"):
        describe_io(fake_ort({"input_ids": [1, "s"]}, ["logits"]), MANIFEST)


def test_unpaired_cache_is_an_error():
    with pytest.raises(DemoConfigError, match="cannot pair KV-cache inputs"):
        describe_io(fake_ort(KV_INPUTS, ["logits", "present_key_0"]), MANIFEST)


def test_token_bytes_detokenize_like_the_tokenizer():
    tok = tiny_tokenizer()
    table = token_bytes_table(tok)
    text = "Héllo wörld — 日本 ✓\n<|im_end|>ok"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert b"".join(table[i] for i in ids).decode("utf-8") == tok.decode(ids, skip_special_tokens=True)
    assert all(table[i] == b"" for i in tok.all_special_ids)


def test_bundles_are_onnx_only(fake_session, tmp_path):
    from otaro_export.demo import load_policy, load_tasks
    from otaro_export.demo.mobile_bundle import write_mobile_bundle

    session = fake_session()
    session.manifest.target = "executorch"
    with pytest.raises(DemoConfigError, match="built from ONNX artifacts"):
        write_mobile_bundle(session, load_policy(), load_tasks(), tmp_path)
    assert not any(tmp_path.iterdir())
