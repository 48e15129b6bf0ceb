"""export_executorch: the ExportDecoder graph with ExecuTorch's LLM ops; weights stored once; few calls per step.

Reference and tolerance: see tests/otaro_export/runtime/test_executorch_session.py
(the artifact's own stored bits in the ONNX exporter's ExportDecoder; 1e-4).
"""

import json

import numpy as np
import pytest
import torch

from otaro_export.errors import ArtifactError
from otaro_export.export.executorch_export import export_executorch_fp32
from otaro_export.export.executorch_reference import encoded_layers, reference_decoder, sefp_calls, stored_layers
from otaro_export.export.onnx_reference import reference_logits
from otaro_export.export.pipeline import ExportOptions, export_model
from otaro_export.export.sefp_recipe import default_recipe
from otaro_export.manifest import Manifest
from otaro_export.runtime import load
from otaro_export.testing import TINY_EXECUTORCH_MAX_SEQ_LEN, tiny_causal_lm, tiny_executorch_artifact

TOL = dict(rtol=1e-4, atol=1e-4)
IDS = np.array([[7, 200, 31, 4, 99, 150]], dtype=np.int64)


@pytest.fixture(scope="session")
def et_root(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "tiny-executorch"


def _check_parity(directory, model_type, num_layers, bits_list=(3, 8)):
    fresh = tiny_causal_lm(model_type, num_hidden_layers=num_layers)
    session = load(directory)
    for bits in bits_list:
        want = reference_logits(reference_decoder(directory, fresh.model, bits, fresh.tokenizer), torch.from_numpy(IDS))
        np.testing.assert_allclose(session.forward(IDS, bits), want.numpy(), **TOL)
    return session


def test_fused_program_stores_the_encoder_output_and_the_tied_matrix_once(et_root):
    directory, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2)
    fresh = tiny_causal_lm("llama", num_hidden_layers=2)
    manifest = Manifest.load(directory)
    assert manifest.quantized_layers[-1] == "lm_head" and len(manifest.quantized_layers) == 4 * 2 + 1
    # the recipe ONNX records, int8 activations up to E5M5 included (docs/FORMAT.md §9)
    assert manifest.extra["sefp_recipe"] == default_recipe().for_target("executorch").manifest_fields()
    assert manifest.extra["sefp_recipe"]["int8_activations"] == 5
    stored, encoded = stored_layers(directory), encoded_layers(fresh.model, fresh.tokenizer, manifest)
    for layer, tensors in stored.items():
        for key, tensor in tensors.items():
            assert torch.equal(tensor, encoded[layer][key]), (layer, key)
    calls = sefp_calls(directory)
    embedding = [c for c in calls if c.kind == "embedding"]
    # the gather reads the very constants lm_head's linear reads: one copy of the matrix in the file
    assert len(embedding) == 1 and embedding[0].buffer_ids == calls[-1].buffer_ids
    packed = sum(t.numel() * t.element_size() for layer in stored.values() for t in layer.values())
    floats = sum(p.numel() * 4 for n, p in fresh.model.named_parameters() if "norm" in n)
    # packed planes + norms + rotary tables (+ the program): no float copy of any SEFP weight
    size = (directory / "model.pte").stat().st_size
    assert size < packed + floats + 2 * TINY_EXECUTORCH_MAX_SEQ_LEN * 8 * 4 + 96 * 1024, size


def test_a_layer_is_a_handful_of_calls(et_root):
    """Fused: no delegate crossings, and few kernel calls per decoder layer (docs/EXPORT_EXECUTORCH.md)."""
    directory, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2)
    calls = Manifest.load(directory).extra["calls_per_step"]
    assert calls["delegate_calls"] == 0
    one_layer, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=1)
    per_layer = calls["kernel_calls"] - Manifest.load(one_layer).extra["calls_per_step"]["kernel_calls"]
    assert per_layer <= 48, calls


def test_the_fused_program_needs_no_kernels_beyond_the_projects_library(et_root):
    """Attention is otaro_llm::kv_attention: no llama:: op (ExecuTorch's LLM custom ops link libtorch)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    directory, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2)
    extra = Manifest.load(directory).extra
    assert extra["runtime_ops"] == [] and extra["attention_kernel"] == "otaro_llm::kv_attention", extra
    plan = deserialize_pte_binary((directory / "model.pte").read_bytes()).program.execution_plan[0]
    ops = {op.name for op in plan.operators}
    assert "otaro_llm::kv_attention" in ops and not [op for op in ops if op.startswith("llama::")], ops


def test_qwen2_portable_with_biases_runs_on_the_stock_runtime(et_root):
    """Qwen2's q/k/v biases go through the decomposed op; the stock runtime needs no library."""
    directory, _ = tiny_executorch_artifact(et_root, "qwen2", kernels="portable", num_layers=1)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kernel_library"] is None and manifest["kernels"] == "portable"
    names = {c.kind for c in sefp_calls(directory)}
    assert not names  # every SEFP op was decomposed into Core ATen ops
    # XNNPACK takes the linears only, one partition each: qkv, o, gate_up, down, lm_head
    assert manifest["extra"]["calls_per_step"]["delegate_calls"] == 5, manifest["extra"]["calls_per_step"]
    # int8 activations up to E5M5 (the default) decomposed too: the reference quantizes the same inputs
    assert manifest["extra"]["sefp_recipe"]["int8_activations"] == 5
    _check_parity(directory, "qwen2", 1, bits_list=(3, 5, 8))


def test_single_op_partitions_skip_the_relegalize_and_the_patch_is_undone(monkeypatch):
    """The lowering's scoped change to ExecuTorch: one-op partitions skip legalize_graph, others keep it."""
    from executorch.exir.backend import backend_api

    from otaro_export.export import executorch_export

    partitions = backend_api._create_partitions
    seen = []

    def record(gm, node_list, tag, skip_legalize_graph=False):
        seen.append(skip_legalize_graph)
        return "sub", "node"

    monkeypatch.setattr(backend_api, "create_submodule_from_nodes", record)
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    one = [graph.call_function(torch.ops.aten.relu.default, (x,))]
    two = [*one, graph.call_function(torch.ops.aten.neg.default, (one[0],))]
    with pytest.raises(KeyError), executorch_export._no_relegalize_for_single_op_partitions():
        assert backend_api.create_submodule_from_nodes is not record
        backend_api.create_submodule_from_nodes(None, [x, *one], "a")
        backend_api.create_submodule_from_nodes(None, two, "b")
        raise KeyError("the patch is undone on errors too")
    assert seen == [True, False]
    assert backend_api.create_submodule_from_nodes is record and backend_api._create_partitions is partitions


def test_the_single_op_patch_takes_effect_in_a_real_lowering(monkeypatch):
    """ExecuTorch's lowering reaches the patched function: a portable lowering of a linear (one XNNPACK
    partition of one op) asks to skip the re-legalize. If a new ExecuTorch stopped routing through
    ``backend_api.create_submodule_from_nodes``, the patch would silently do nothing and the portable
    export of the default model would go back to > 27 minutes; this fails instead."""
    from executorch.exir.backend import backend_api

    from otaro_export.export import executorch_export

    original = backend_api.create_submodule_from_nodes
    seen = []

    def spy(gm, node_list, tag, skip_legalize_graph=False):
        seen.append(skip_legalize_graph)
        return original(gm, node_list, tag, skip_legalize_graph=skip_legalize_graph)

    monkeypatch.setattr(backend_api, "create_submodule_from_nodes", spy)
    # a linear and an op XNNPACK's linear config does not fuse into it (a ReLU would join the partition)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Softmax(dim=-1)).eval()
    ep = torch.export.export(model, (torch.randn(2, 16),))
    executorch_export.lower_to_executorch(ep, "portable")
    assert seen == [True], f"ExecuTorch's lowering called create_submodule_from_nodes with {seen}"


def test_portable_attention_needs_no_llm_ops_and_gives_the_same_logits(et_root):
    """--attention portable: standard ops only, the cache updated in place, the llm-ops program's logits."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    directory, _ = tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2, attention="portable")
    extra = Manifest.load(directory).extra
    assert extra["attention"] == "portable" and extra["runtime_ops"] == []
    assert extra["kv_cache"].startswith("mutable buffers k_cache_i [kv_heads, head_dim, max_seq_len]")
    plan = deserialize_pte_binary((directory / "model.pte").read_bytes()).program.execution_plan[0]
    ops = {op.name for op in plan.operators}
    assert not [op for op in ops if op.startswith("llama::")], ops
    # the reinplace pass left index_put_ on the buffers, with no write-back copy of whole caches
    assert "aten::index_put_" in ops and "aten::copy_" not in ops and "aten::index_put" not in ops, ops
    session = _check_parity(directory, "llama", 2, bits_list=(3, 5, 8))
    llm_ops = load(tiny_executorch_artifact(et_root, "llama", kernels="fused", num_layers=2)[0])
    for bits in (3, 8):
        np.testing.assert_allclose(session.forward(IDS, bits), llm_ops.forward(IDS, bits), **TOL)
    # decoding step by step (S = 1 at growing positions) agrees too
    steps = [session.generate_ids(IDS[0].tolist(), 8, 12, stop_at_eos=False) for session in (session, llm_ops)]
    assert steps[0] == steps[1]


def test_mistral_fused_with_external_weights(et_root, tmp_path):
    directory, _ = tiny_executorch_artifact(et_root, "mistral", kernels="fused", num_layers=1, external_weights=True)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["kernel_library"] == "executorch"
    assert manifest["extra"]["data_files"] == ["model.ptd"]
    packed = sum(t.numel() * t.element_size() for layer in stored_layers(directory).values() for t in layer.values())
    assert (directory / "model.ptd").stat().st_size >= packed  # the planes live in the .ptd (read back from it)
    _check_parity(directory, "mistral", 1)
    # without its data file the artifact is rejected with a clear error
    copy_dir = tmp_path / "no-ptd"
    copy_dir.mkdir()
    for name in ("manifest.json", "model.pte"):
        (copy_dir / name).write_bytes((directory / name).read_bytes())
    with pytest.raises(ArtifactError, match="model.ptd"):
        load(copy_dir, verify=False)


def test_lm_head_floor_and_float_lm_head(tmp_path):
    loaded = tiny_causal_lm("llama", num_hidden_layers=1)
    recipe = default_recipe(lm_head_min_bits=6, layer_floors="none")
    export_model(
        ExportOptions(target="executorch", output=tmp_path / "floor", recipe=recipe, max_seq_len=16),
        log=lambda _m: None,
        loaded=loaded,
    )
    assert Manifest.load(tmp_path / "floor").extra["precision_floors"] == {"lm_head": 6}
    session = _check_parity(tmp_path / "floor", "llama", 1, bits_list=(3, 6))
    # the floored lm_head (and embedding) run at E5M6 for every call below it: E5M3..E5M5 only differ in the layers
    assert np.abs(session.forward(IDS, 3) - session.forward(IDS, 5)).max() > 1e-3

    loaded = tiny_causal_lm("llama", num_hidden_layers=1)
    export_model(
        ExportOptions(
            target="executorch", output=tmp_path / "float", recipe=default_recipe(lm_head="float"), max_seq_len=16
        ),
        log=lambda _m: None,
        loaded=loaded,
    )
    manifest = Manifest.load(tmp_path / "float")
    assert "lm_head" not in manifest.quantized_layers
    assert all(c.kind == "linear" for c in sefp_calls(tmp_path / "float"))
    _check_parity(tmp_path / "float", "llama", 1, bits_list=(4,))


def _int8_settings(directory) -> list:
    """act_int8_max_bits of every otaro::sefp_linear.out call of a .pte (the value before out)."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    plan = deserialize_pte_binary((directory / "model.pte").read_bytes()).program.execution_plan[0]
    names = [op.name + (f".{op.overload}" if op.overload else "") for op in plan.operators]
    found = []
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ == "KernelCall" and names[args.op_index] == "otaro::sefp_linear.out":
                found.append(plan.values[args.args[9]].val.int_val)
    return found


def test_int8_activations_are_recorded_and_can_be_turned_off(tmp_path):
    """Default (as ONNX): every SEFP linear call carries act_int8_max_bits = 5 and the manifest says so; fitted
    rows E5M3..E5M5 are stored on the int8 grid. --int8-activations 0: float activations. Both programs match
    their own references (which quantize the inputs where the artifact does, docs/FORMAT.md §9); they differ at
    E5M3 and E5M5 and agree at E5M6. Tolerance: the float one (1e-4, this module's); a tiny model's one layer does not
    amplify an fq rounding-boundary flip (docs/FORMAT.md §9, Parity), as in the ONNX export's int8 test."""
    from otaro_export import activation_quant

    loaded = tiny_causal_lm("llama", num_hidden_layers=1)
    logits = {}
    for name, value in (("int8", None), ("float", 0)):
        out = tmp_path / name
        recipe = default_recipe(int8_activations=value, layer_floors="none")
        export_model(
            ExportOptions(target="executorch", output=out, max_seq_len=16, recipe=recipe), lambda _m: None, loaded
        )
        want = 5 if value is None else 0
        assert Manifest.load(out).extra["sefp_recipe"]["int8_activations"] == want
        settings = _int8_settings(out)
        assert len(settings) == 4 + 1 and set(settings) == {want}
        for layer in stored_layers(out).values():
            if "levels" in layer and want:
                assert all(activation_quant.int8_grid_levels(layer["levels"], k) for k in (3, 4, 5))
        fresh = tiny_causal_lm("llama", num_hidden_layers=1)
        session = load(out)
        for k in (3, 5, 6):
            logits[name, k] = session.forward(IDS, k)
            ref = reference_logits(reference_decoder(out, fresh.model, k, fresh.tokenizer), torch.from_numpy(IDS))
            np.testing.assert_allclose(logits[name, k], ref.numpy(), **TOL, err_msg=f"{name} E5M{k}")
    for k in (3, 5):
        assert not np.allclose(logits["int8", k], logits["float", k], **TOL), k
    np.testing.assert_allclose(logits["int8", 6], logits["float", 6], **TOL)


def test_fp32_baseline(tmp_path):
    loaded = tiny_causal_lm("llama", num_hidden_layers=1)
    manifest = export_executorch_fp32(
        loaded, tmp_path / "fp32", max_seq_len=TINY_EXECUTORCH_MAX_SEQ_LEN, log=lambda _m: None
    )
    assert manifest.quantized_layers == [] and manifest.extra["baseline"] == "fp32"
    assert manifest.kernel_library is None and manifest.extra["calls_per_step"]["delegate_calls"] > 0
    session = load(tmp_path / "fp32")
    with torch.no_grad():
        want = tiny_causal_lm("llama", num_hidden_layers=1).model(torch.from_numpy(IDS)).logits.numpy()
    np.testing.assert_allclose(session.forward(IDS, 8), want, **TOL)
    np.testing.assert_array_equal(session.forward(IDS, 3), session.forward(IDS, 8))  # no SEFP: bits ignored


@pytest.mark.slow
def test_smollm2_greedy_32_tokens_at_e5m8_equal_torch_reference(tmp_path):
    from otaro_export.models import load_model

    loaded = load_model("default")
    options = ExportOptions(target="executorch", output=tmp_path / "smol", kernels="fused", max_seq_len=96)
    export_model(options, log=lambda _m: None, loaded=loaded)
    session = load(tmp_path / "smol")
    prompt = session.encode_prompt("What is the capital of France?")
    got = session.generate_ids(prompt, 8, 32, stop_at_eos=False)
    reference = reference_decoder(tmp_path / "smol", load_model("default").model, 8)
    ids, want = torch.tensor([prompt]), []
    for _ in range(32):
        want.append(int(reference_logits(reference, ids)[0, -1].argmax()))
        ids = torch.cat([ids, torch.tensor([[want[-1]]])], dim=1)
    assert got == want
    # one copy of every weight, tied matrix included, at 9.125 bits (146.3 MiB of planes for 134.5 M
    # weights), plus norms, rotary tables and the program: no float copy of anything
    planes = sum(
        t.numel() * t.element_size() for layer in stored_layers(tmp_path / "smol").values() for t in layer.values()
    )
    size = (tmp_path / "smol" / "model.pte").stat().st_size
    assert planes <= size <= planes + 2 * 2**20, (size, planes)


def test_otaro_bench_re_exports_a_cached_pte_of_the_previous_decoder(tmp_path):
    from otaro_export.bench.artifacts import is_complete

    manifest = {"target": "executorch", "inputs": ["input_ids", "cache_position", "bits"]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert not is_complete(tmp_path)
    manifest["inputs"] = ["input_ids", "input_pos", "bits", "logits_positions"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert is_complete(tmp_path)
