"""ONNX export: one file, parity with the torch reference at every precision, both kernel paths."""

import copy
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from otaro_export.convert import convert_model, dequantized_copy, select_sefp_linears
from otaro_export.errors import UnsupportedModelError
from otaro_export.export.onnx_export import ARTIFACT_NAME, data_files, kernel_fields
from otaro_export.export.onnx_sefp_function import DOMAIN, OP_TYPE
from otaro_export.export.pipeline import ExportOptions, export_model
from otaro_export.manifest import Manifest
from otaro_export.sefp import SUPPORTED_BITS

# Both runtimes dequantize exactly (same M8 data, same truncation), so the only difference from the
# torch reference is float32 summation order in matmuls/attention: ~1e-6 on logits of magnitude ~10.
# 1e-4 leaves margin for that and still catches any wrong weight bit (a flipped mantissa bit moves
# logits by >= 1e-3 here).
ATOL = 1e-4


def _feeds(manifest, ids, bits):
    info = manifest.model
    feeds = {"input_ids": ids, "cache_position": np.arange(ids.shape[1], dtype=np.int64), "bits": np.array(bits)}
    empty = np.zeros((1, info["num_kv_heads"], 0, info["head_dim"]), np.float32)
    for name in manifest.inputs:
        if name.startswith("past_"):
            feeds[name] = empty
    return feeds


def _ort_session(path, use_library):
    if use_library:
        from otaro_export.runtime_ops import ort_library

        return ort.InferenceSession(str(path), ort_library.session_options(num_threads=2))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_ort_matches_torch_reference_at_every_precision_fused_and_fallback(model_type, tiny_onnx):
    directory, loaded = tiny_onnx(model_type)
    manifest = Manifest.load(directory)
    converted = copy.deepcopy(loaded.model)
    convert_model(converted)
    ids = np.random.default_rng(0).integers(0, loaded.model.config.vocab_size, (1, 9))
    refs = {}
    with torch.no_grad():
        for k in SUPPORTED_BITS:
            refs[k] = dequantized_copy(converted, k)(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    for use_library in (True, False):
        session = _ort_session(directory / ARTIFACT_NAME, use_library)  # ONE session for all precisions
        for k in SUPPORTED_BITS:
            logits = session.run(["logits"], _feeds(manifest, ids, k))[0]
            np.testing.assert_allclose(logits, refs[k], rtol=0, atol=ATOL, err_msg=f"E5M{k} library={use_library}")
        # precision matters: E5M3 and E5M8 logits differ far beyond the tolerance
        assert np.abs(refs[3] - refs[8]).max() > 100 * ATOL


def test_artifact_structure_and_manifest(tiny_onnx):
    directory, loaded = tiny_onnx("llama")
    path = directory / ARTIFACT_NAME
    onnx.checker.check_model(str(path))
    manifest = Manifest.load(directory)
    layers = select_sefp_linears(loaded.model)
    assert manifest.target == "onnx" and manifest.artifact == ARTIFACT_NAME
    assert manifest.kernels == "fused" and manifest.kernel_library == "onnxruntime"
    assert manifest.quantized_layers == layers
    assert manifest.inputs[:3] == ["input_ids", "cache_position", "bits"]
    assert manifest.outputs[0] == "logits" and len(manifest.outputs) == 1 + 2 * loaded.model.config.num_hidden_layers
    assert (directory / manifest.tokenizer).is_dir()

    model = onnx.load(str(path), load_external_data=False)
    custom = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    assert len(custom) == len(layers)
    function = next(f for f in model.functions if f.domain == DOMAIN and f.name == OP_TYPE)
    opset = {o.domain: o.version for o in model.opset_import}
    assert {o.domain: o.version for o in function.opset_import}[""] == opset[""]

    # ONE external data file; float weights of SEFP layers are not stored; the tied embedding once
    assert [p.name for p in data_files(path)] == [f"{ARTIFACT_NAME}.data"]
    full = onnx.load(str(path))
    shapes = [tuple(t.dims) for t in full.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]
    sefp_shapes = {tuple(loaded.model.get_submodule(n).weight.shape) for n in layers}
    assert not sefp_shapes & {s for s in shapes if len(s) == 2}
    embed = tuple(loaded.model.get_input_embeddings().weight.shape)
    assert shapes.count(embed) + shapes.count(embed[::-1]) == 1


def test_kernel_modes_in_the_manifest():
    assert kernel_fields("fused") == ("fused", "onnxruntime")
    assert kernel_fields("portable") == ("portable", None)
    assert kernel_fields("fused", lowered=False) == ("portable", None)  # fp32 baseline: no custom op
    with pytest.raises(ValueError, match="fused or portable"):
        kernel_fields("fast")


def test_loads_from_another_working_directory(tiny_onnx, tmp_path, monkeypatch):
    directory, _ = tiny_onnx("llama")
    monkeypatch.chdir(tmp_path)  # external data must resolve relative to the .onnx, not the cwd
    session = ort.InferenceSession(str((directory / ARTIFACT_NAME).resolve()))
    ids = np.zeros((1, 2), np.int64)
    assert session.run(["logits"], _feeds(Manifest.load(directory), ids, 5))[0].shape[:2] == (1, 2)


def test_out_of_range_bits_fail_in_graph_on_both_paths(tiny_onnx):
    """A raw onnxruntime user gets an error, not zeros: the kernel checks, and so does the function body."""
    directory, _ = tiny_onnx("llama")
    manifest = Manifest.load(directory)
    ids = np.zeros((1, 2), np.int64)
    for use_library, marker in ((True, "bits must be one of 3..8"), (False, "SEFPLinear_bits_must_be_3_to_8")):
        session = _ort_session(directory / ARTIFACT_NAME, use_library)
        for bad in (2, 9):
            with pytest.raises(Exception, match=marker):  # onnxruntime's own exception types
                session.run(["logits"], _feeds(manifest, ids, bad))


def test_fp32_baseline_export_matches_the_float_model(tmp_path):
    from otaro_export.export.onnx_export import export_onnx_fp32
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm("qwen2")
    options = ExportOptions(target="onnx", output=tmp_path, max_seq_len=32)
    manifest = export_onnx_fp32(loaded, options, tmp_path, lambda m: None)
    assert manifest.extra["weights"] == "fp32" and manifest.quantized_layers == []
    assert manifest.kernel_library is None
    model = onnx.load(str(tmp_path / ARTIFACT_NAME), load_external_data=False)
    assert not any(n.domain == DOMAIN for n in model.graph.node) and not model.functions
    ids = np.arange(5, dtype=np.int64)[None]
    logits = _ort_session(tmp_path / ARTIFACT_NAME, False).run(["logits"], _feeds(manifest, ids, 8))[0]
    with torch.no_grad():
        ref = loaded.model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=ATOL)


def test_sliding_window_longer_than_the_cache_is_refused():
    from otaro_export.export.kv_decoder import KVCacheDecoder
    from otaro_export.testing import tiny_causal_lm

    decoder = KVCacheDecoder(tiny_causal_lm("mistral", sliding_window=16).model)
    decoder.check_window(16)
    with pytest.raises(UnsupportedModelError, match="--max-seq-len <= 16"):
        decoder.check_window(17)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from otaro_export.models import LoadedModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, mistral"):
        export_model(
            ExportOptions(target="onnx", output=tmp_path), log=lambda m: None, loaded=LoadedModel(gpt2, None, "gpt2")
        )
    assert not os.listdir(tmp_path)
