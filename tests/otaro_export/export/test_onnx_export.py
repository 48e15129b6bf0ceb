"""ONNX export: one fused graph, parity with the torch reference at every precision, both kernel paths."""

import os
from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from otaro_export.errors import UnsupportedModelError
from otaro_export.export.onnx_export import ARTIFACT_NAME, data_files, kernel_fields
from otaro_export.export.onnx_reference import reference_decoder, reference_logits, stored_layers
from otaro_export.export.onnx_sefp_function import DOMAIN
from otaro_export.export.pipeline import ExportOptions, export_model
from otaro_export.manifest import Manifest
from otaro_export.sefp import SUPPORTED_BITS

# Runtime and reference dequantize the same stored bits exactly, so the only difference is float32
# summation order in matmuls and attention: ~1e-6 on logits of magnitude ~10. 1e-4 leaves margin for
# that and still catches any wrong weight bit (a flipped mantissa bit moves logits by >= 1e-3 here).
ATOL = 1e-4


def _ort_session(path, use_library):
    if use_library:
        from otaro_export.runtime_ops import ort_library

        return ort.InferenceSession(str(path), ort_library.session_options(num_threads=2))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options)


def _run(session, manifest, ids, bits, start=0, cache=None, positions=None):
    """One raw onnxruntime step (no project session): returns (logits, caches)."""
    info = manifest.model
    shape = (1, info["num_kv_heads"], info["max_seq_len"], info["head_dim"])
    names = [n for n in manifest.inputs if n.startswith("past_")]
    cache = cache or [np.zeros(shape, np.float32) for _ in names]
    total = start + ids.shape[1]
    feeds = {
        "input_ids": ids,
        "bits": np.array(bits, np.int64),
        "seqlens_k": np.array([total - 1], np.int32),
        "total_sequence_length": np.array(total, np.int32),
        "logits_positions": np.arange(ids.shape[1]) if positions is None else np.asarray(positions, np.int64),
        **dict(zip(names, cache)),
    }
    out = session.run(None, feeds)
    return out[0], out[1:]


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_ort_matches_torch_reference_at_every_precision_fused_and_fallback(model_type, tiny_onnx):
    directory, loaded = tiny_onnx(model_type)
    manifest = Manifest.load(directory)
    ids = np.random.default_rng(0).integers(0, loaded.model.config.vocab_size, (1, 9))
    refs = {k: reference_logits(reference_decoder(directory, loaded.model, k), torch.from_numpy(ids)).numpy()
            for k in SUPPORTED_BITS}  # fmt: skip
    for use_library in (True, False):
        session = _ort_session(directory / ARTIFACT_NAME, use_library)  # ONE session for all precisions
        for k in SUPPORTED_BITS:
            logits, _ = _run(session, manifest, ids, k)
            np.testing.assert_allclose(logits, refs[k], rtol=0, atol=ATOL, err_msg=f"E5M{k} library={use_library}")
        # precision matters: E5M3 and E5M8 logits differ far beyond the tolerance
        assert np.abs(refs[3] - refs[8]).max() > 100 * ATOL


def test_cached_decode_and_chunks_match_one_pass(tiny_onnx):
    """Prefill, one-token steps and a multi-token chunk into the same caches equal the full forward."""
    directory, loaded = tiny_onnx("llama")
    manifest = Manifest.load(directory)
    session = _ort_session(directory / ARTIFACT_NAME, True)
    ids = np.random.default_rng(1).integers(0, loaded.model.config.vocab_size, (1, 10))
    full, _ = _run(session, manifest, ids, 4)
    a, cache = _run(session, manifest, ids[:, :5], 4)
    b, cache = _run(session, manifest, ids[:, 5:6], 4, start=5, cache=cache)
    c, _ = _run(session, manifest, ids[:, 6:], 4, start=6, cache=cache, positions=[3])  # last position only
    np.testing.assert_allclose(np.concatenate([a, b], 1), full[:, :6], rtol=0, atol=ATOL)
    np.testing.assert_allclose(c[:, 0], full[:, 9], rtol=0, atol=ATOL)


def test_the_float_source_model_and_the_export_decoder_agree():
    """The export decoder (packed projections, fused ops) is the HF model, computed another way."""
    from otaro_export.export.llm_decoder import ExportDecoder
    from otaro_export.testing import tiny_causal_lm

    for model_type in ("llama", "qwen2", "mistral"):
        model = tiny_causal_lm(model_type).model
        ids = torch.randint(0, model.config.vocab_size, (1, 7))
        with torch.no_grad():
            np.testing.assert_allclose(
                reference_logits(ExportDecoder(model, 16), ids), model(ids).logits, rtol=0, atol=1e-5
            )


def test_artifact_structure_and_manifest(tiny_onnx):
    directory, loaded = tiny_onnx("llama")
    path = directory / ARTIFACT_NAME
    onnx.checker.check_model(str(path))
    manifest = Manifest.load(directory)
    num_layers = loaded.model.config.num_hidden_layers
    assert manifest.target == "onnx" and manifest.artifact == ARTIFACT_NAME
    assert manifest.kernels == "fused" and manifest.kernel_library == "onnxruntime"
    assert len(manifest.quantized_layers) == 4 * num_layers + 1 and manifest.quantized_layers[-1] == "lm_head"
    assert manifest.inputs[:5] == ["input_ids", "bits", "seqlens_k", "total_sequence_length", "logits_positions"]
    assert manifest.outputs[0] == "logits" and len(manifest.outputs) == 1 + 2 * num_layers
    assert (directory / manifest.tokenizer).is_dir()

    model = onnx.load(str(path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["SEFPLinear"] == 4 * num_layers + 1 and ops["SEFPEmbedding"] == 1
    assert ops["GroupQueryAttention"] == num_layers and ops["SkipSimplifiedLayerNormalization"] == 2 * num_layers
    # a decoder layer is 7 nodes: the MLP's SwiGLU is folded into its gate/up SEFPLinear (swiglu=1); the rest
    # is the first norm, the embedding, the final norm and the logits, plus a Max (and its constant) per
    # distinct precision floor
    assert manifest.extra["fused_swiglu"] == num_layers
    swiglu = [n for n in model.graph.node if any(a.name == "swiglu" and a.i == 1 for a in n.attribute)]
    assert len(swiglu) == num_layers and all(n.op_type == "SEFPLinear" for n in swiglu)
    assert ops["Split"] == ops["Sigmoid"] == 0
    floors = len(set(manifest.extra["precision_floors"].values()))
    assert len(model.graph.node) <= 7 * num_layers + 12 + 2 * floors, ops
    assert ops["Max"] == floors
    opset = {o.domain: o.version for o in model.opset_import}
    for function in model.functions:
        assert function.domain == DOMAIN and {o.domain: o.version for o in function.opset_import}[""] == opset[""]

    # ONE external data file; no float copy of any SEFP weight; the tied embedding + lm_head stored once
    assert [p.name for p in data_files(path)] == [f"{ARTIFACT_NAME}.data"]
    full = onnx.load(str(path))
    float2d = [
        tuple(t.dims) for t in full.graph.initializer if t.data_type == onnx.TensorProto.FLOAT and len(t.dims) == 2
    ]
    embed = tuple(loaded.model.get_input_embeddings().weight.shape)
    assert embed not in float2d and embed[::-1] not in float2d
    assert set(stored_layers(directory)) == set(manifest.quantized_layers)


def test_lm_head_can_stay_float(tmp_path):
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm("llama")
    options = ExportOptions(target="onnx", output=tmp_path, max_seq_len=32, recipe=default_recipe(lm_head="float"))
    export_model(options, log=lambda m: None, loaded=loaded)
    manifest = Manifest.load(tmp_path)
    assert "lm_head" not in manifest.quantized_layers
    model = onnx.load(str(tmp_path / ARTIFACT_NAME), load_external_data=False)
    assert not any(n.op_type == "SEFPEmbedding" for n in model.graph.node)
    ids = np.arange(6, dtype=np.int64)[None]
    logits, _ = _run(_ort_session(tmp_path / ARTIFACT_NAME, True), manifest, ids, 3)
    ref = reference_logits(reference_decoder(tmp_path, loaded.model, 3), torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=ATOL)


def test_precision_floors_hold_in_the_graph(tmp_path):
    """An lm_head floor of E5M5: asking for E5M3 reads lm_head at E5M5 and the rest at E5M3."""
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm("llama")
    recipe = default_recipe(lm_head_min_bits=5, layer_floors="none")
    export_model(ExportOptions(target="onnx", output=tmp_path, max_seq_len=32, recipe=recipe), lambda m: None, loaded)
    manifest = Manifest.load(tmp_path)
    assert manifest.extra["precision_floors"] == {"lm_head": 5}
    ids = np.arange(6, dtype=np.int64)[None]
    session = _ort_session(tmp_path / ARTIFACT_NAME, True)
    for k in (3, 6):
        logits, _ = _run(session, manifest, ids, k)
        ref = reference_logits(reference_decoder(tmp_path, loaded.model, k), torch.from_numpy(ids)).numpy()
        np.testing.assert_allclose(logits, ref, rtol=0, atol=ATOL, err_msg=f"E5M{k}")


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
    logits, _ = _run(session, Manifest.load(directory), np.zeros((1, 2), np.int64), 5)
    assert logits.shape[:2] == (1, 2)


def test_out_of_range_bits_fail_in_graph_on_both_paths(tiny_onnx):
    """A raw onnxruntime user gets an error, not zeros: the kernel checks, and so does the function body."""
    directory, _ = tiny_onnx("llama")
    manifest = Manifest.load(directory)
    ids = np.zeros((1, 2), np.int64)
    for use_library, marker in ((True, "bits must be"), (False, "bits_must_be_3_to_8")):
        session = _ort_session(directory / ARTIFACT_NAME, use_library)
        for bad in (2, 9):
            with pytest.raises(Exception, match=marker):  # onnxruntime's own exception types
                _run(session, manifest, ids, bad)


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
    logits, _ = _run(_ort_session(tmp_path / ARTIFACT_NAME, False), manifest, ids, 8)
    with torch.no_grad():
        ref = loaded.model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
    np.testing.assert_allclose(logits, ref, rtol=0, atol=ATOL)


def test_sliding_window_longer_than_the_cache_is_refused():
    from otaro_export.export.llm_decoder import check_window
    from otaro_export.testing import tiny_causal_lm

    config = tiny_causal_lm("mistral", sliding_window=16).model.config
    check_window(config, 16)
    with pytest.raises(UnsupportedModelError, match="--max-seq-len <= 16"):
        check_window(config, 17)


def test_unsupported_architecture_is_a_clear_error(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from otaro_export.models import LoadedModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, mistral"):
        export_model(
            ExportOptions(target="onnx", output=tmp_path), log=lambda m: None, loaded=LoadedModel(gpt2, None, "gpt2")
        )
    assert not os.listdir(tmp_path)


def test_onnxscript_ort_fusions_find_nothing_left_to_fuse(tiny_onnx):
    """The exporter emits onnxruntime's fused ops itself: onnxscript's ORT fusion rules have nothing to do.

    (Run on our files they would also inline the model-local SEFPLinear function, replacing the custom
    kernel by its standard-op body, so the export never runs them.)
    """
    import onnx_ir as ir
    from onnxscript.rewriter import ort_fusions

    directory, _ = tiny_onnx("llama")
    model = ir.serde.deserialize_model(onnx.load(str(directory / ARTIFACT_NAME)))
    _, fusions = ort_fusions.optimize_for_ort(model)
    assert fusions and not any(fusions.values()), fusions


def test_int8_activations_are_recorded_and_can_be_turned_off(tmp_path):
    """Default: every SEFPLinear node carries act_int8_max_bits = 5 and the manifest says so; fitted rows E5M3..E5M5
    are stored as integers (the integer kernel's input). --int8-activations 0: no attribute, float activations.
    Both artifacts match their own references; they differ at E5M3 and E5M5 and agree at E5M6 and above."""
    from otaro_export import activation_quant
    from otaro_export.export.sefp_recipe import default_recipe
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm("llama")
    ids = np.arange(7, dtype=np.int64)[None]
    logits = {}
    for name, value in (("int8", None), ("float", 0)):
        out = tmp_path / name
        recipe = default_recipe(int8_activations=value, layer_floors="none")
        export_model(ExportOptions(target="onnx", output=out, max_seq_len=32, recipe=recipe), lambda m: None, loaded)
        manifest = Manifest.load(out)
        want = 5 if value is None else 0
        assert manifest.extra["sefp_recipe"]["int8_activations"] == want
        model = onnx.load(str(out / ARTIFACT_NAME), load_external_data=False)
        attrs = [
            {a.name: a.i for a in n.attribute}.get("act_int8_max_bits", 0)
            for n in model.graph.node
            if n.op_type == "SEFPLinear"
        ]
        assert attrs and set(attrs) == {want}
        for layer in stored_layers(out).values():
            if "levels" in layer and want:
                assert all(activation_quant.int8_grid_levels(layer["levels"], k) for k in (3, 4, 5))
        session = _ort_session(out / ARTIFACT_NAME, True)
        for k in (3, 5, 6):
            logits[name, k], _ = _run(session, manifest, ids, k)
            ref = reference_logits(reference_decoder(out, loaded.model, k), torch.from_numpy(ids)).numpy()
            np.testing.assert_allclose(logits[name, k], ref, rtol=0, atol=ATOL, err_msg=f"{name} E5M{k}")
    for k in (3, 5):
        assert not np.allclose(logits["int8", k], logits["float", k], rtol=0, atol=ATOL), k
    np.testing.assert_allclose(logits["int8", 6], logits["float", 6], rtol=0, atol=ATOL)
