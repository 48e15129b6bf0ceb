"""``lower_sefp_embedding``: a tied embedding gathers rows of the frozen lm_head's planes."""

import torch

from otaro_export.passes.freeze_sefp_weights import freeze_sefp_weights
from otaro_export.passes.lower_sefp_embedding import lower_sefp_embedding
from otaro_export.passes.lower_sefp_linears import lower_sefp_linears
from otaro_export.sefp import quantize

EMBED = torch.ops.otaro.sefp_embedding.default
LINEAR = torch.ops.otaro.sefp_linear.default


def test_tied_embedding_reads_the_lm_head_planes(float_ep, ids, tiny):
    model = tiny[0]
    ep, frozen = freeze_sefp_weights(float_ep, ["lm_head"])
    ep, _ = lower_sefp_linears(ep, frozen)
    ep, result = lower_sefp_embedding(ep, frozen)
    assert result.lowered == ["lm_head"]
    (gather,) = [n for n in ep.graph.nodes if n.target == EMBED]
    (head,) = [n for n in ep.graph.nodes if n.target == LINEAR]
    assert gather.args[1:6] == head.args[1:6]  # the same five plane constants: one copy
    assert not any(n.target == torch.ops.aten.embedding.default for n in ep.graph.nodes)

    # the program equals the float model with BOTH uses of the matrix at E5M8
    ref = model.__class__(model.config).eval()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        w = quantize(model.lm_head.weight).dequantize(8)
        ref.model.embed_tokens.weight.copy_(w)  # tied: lm_head reads it too
        torch.testing.assert_close(ep.module()(ids, torch.tensor(8)), ref(ids).logits, rtol=0, atol=1e-4)


def test_untouched_embeddings_stay_float(float_ep):
    ep, frozen = freeze_sefp_weights(float_ep, ["model.layers.0.mlp.down_proj"])
    ep, _ = lower_sefp_linears(ep, frozen)
    ep, result = lower_sefp_embedding(ep, frozen)
    assert result.count == 0
    assert any(n.target == torch.ops.aten.embedding.default for n in ep.graph.nodes)
