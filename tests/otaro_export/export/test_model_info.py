import ast
from pathlib import Path

from otaro_export.export.model_info import model_info
from otaro_export.testing import tiny_causal_lm


def test_model_info_reads_the_config():
    loaded = tiny_causal_lm("qwen2")
    info = model_info(loaded.model, loaded.source, max_seq_len=48)
    cfg = loaded.model.config
    assert info == {
        "source": "tiny-random-qwen2",
        "model_type": "qwen2",
        "vocab_size": cfg.vocab_size,
        "num_layers": 2,
        "num_kv_heads": 2,
        "head_dim": cfg.hidden_size // cfg.num_attention_heads,
        "max_seq_len": 48,
        "eos_token_ids": [loaded.tokenizer.eos_token_id],
    }


def test_eos_list_from_generation_config():
    loaded = tiny_causal_lm()
    loaded.model.generation_config.eos_token_id = [5, 7]
    assert model_info(loaded.model, "x", 16)["eos_token_ids"] == [5, 7]


def test_target_writers_do_not_import_the_driver():
    # pipeline.py calls the writers; a writer importing pipeline back (even inside a function) is a cycle.
    import otaro_export.export.executorch_export as et_writer
    import otaro_export.export.onnx_export as onnx_writer

    for module in (onnx_writer, et_writer):
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert "otaro_export.export.pipeline" not in imported, module.__name__
