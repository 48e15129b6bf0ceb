"""``lower_to_sefp``, the entry point both exporters call: parity at every precision."""

import copy

import pytest
import torch

from otaro_export.convert import convert_model, dequantized_copy, select_sefp_linears
from otaro_export.passes import lower_to_sefp
from otaro_export.sefp import SUPPORTED_BITS
from otaro_export.testing import tiny_causal_lm

SEFP = torch.ops.otaro.sefp_linear.default


# The lowered op dequantizes exactly like dequantized_copy; the two graphs differ only in
# float32 summation order inside matmuls (~1e-6 relative on logits of size ~10), hence 1e-4.
ATOL = 1e-4


@pytest.mark.parametrize(
    "model_type, lm_head", [("llama", False), ("qwen2", False), ("mistral", False), ("llama", True)]
)
def test_lowered_program_matches_torch_reference_at_every_precision(model_type, lm_head, exporter, ids):
    model = tiny_causal_lm(model_type).model  # tied: with lm_head=True the embedding gathers lm_head's planes
    names = select_sefp_linears(model, quantize_lm_head=lm_head)
    converted = copy.deepcopy(model)
    convert_model(converted, quantize_lm_head=lm_head)
    ep, report = lower_to_sefp(exporter(model), names)

    assert report.layers == names and not report.added_bits_input
    assert report.embedding_nodes == int(lm_head) and report.sefp_nodes == len(names) + report.embedding_nodes
    assert report.packed_bytes > 0
    stored = set(ep.state_dict) | set(ep.constants)
    decoder_weights = {f"model.{n}.weight" for n in names if n != "lm_head"}
    assert not decoder_weights & stored, "float weights must not stay in the program"
    if lm_head:  # the tied matrix is stored once, as SEFP planes
        assert not {"model.embed_tokens.weight", "lm_head.weight"} & stored
    bits_node = next(n for n in ep.graph.find_nodes(op="placeholder") if n.name == "bits")
    assert all(n.args[6] is bits_node for n in ep.graph.nodes if n.target == SEFP)

    module = ep.module()
    for k in SUPPORTED_BITS:
        ref = dequantized_copy(converted, k)(input_ids=ids, use_cache=False).logits
        torch.testing.assert_close(module(ids, torch.tensor(k)), ref, rtol=0, atol=ATOL, msg=f"E5M{k}")
    # the sequence length stayed dynamic through the passes
    assert module(ids[:, :3], torch.tensor(5)).shape == (1, 3, model.config.vocab_size)


@pytest.mark.filterwarnings("ignore:A model attribute:UserWarning")  # transformers wrapper internals
def test_static_kv_cache_program_with_mutable_buffers(tiny):
    """ExecuTorch's transformers wrapper: static K/V caches are buffers mutated by the program."""
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    model, converted, names = tiny
    model = copy.deepcopy(model)
    model.generation_config.cache_implementation = "static"

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = TorchExportableModuleForDecoderOnlyLM(model, batch_size=1, max_cache_len=16).model

        def forward(self, input_ids, cache_position, bits):
            return self.inner(input_ids=input_ids, cache_position=cache_position)

    seq = torch.export.Dim("seq", max=15)
    ep = torch.export.export(
        Decoder(),
        (torch.ones(1, 3, dtype=torch.long), torch.arange(3), torch.tensor(8)),
        dynamic_shapes=({1: seq}, {0: seq}, None),
        strict=True,
    )
    caches = {s.target for s in ep.graph_signature.input_specs if "cache" in (s.target or "")}
    assert caches
    ep, report = lower_to_sefp(ep, names)
    assert report.sefp_nodes == len(names)
    assert caches <= {s.target for s in ep.graph_signature.input_specs}, "cache buffers must survive"

    tokens = torch.randint(0, 259, (1, 6), generator=torch.Generator().manual_seed(3))
    for k in (3, 8):
        module = ep.module()  # fresh caches
        ref = dequantized_copy(converted, k)(input_ids=tokens, use_cache=False).logits
        prefill = module(tokens[:, :5], torch.arange(5), torch.tensor(k))
        step = module(tokens[:, 5:], torch.tensor([5]), torch.tensor(k))
        got = torch.cat([prefill, step], dim=1)
        torch.testing.assert_close(got, ref, rtol=0, atol=ATOL, msg=f"E5M{k}")
