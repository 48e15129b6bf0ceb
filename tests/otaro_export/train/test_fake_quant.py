import pytest
import torch
from torch import nn

from otaro_export.convert import select_sefp_linears
from otaro_export.errors import InvalidBitsError
from otaro_export.sefp import SUPPORTED_BITS, fake_quantize, quantize
from otaro_export.train.fake_quant import (
    FakeQuantLinear,
    attach_fake_quant,
    detach_fake_quant,
    fake_quant_layers,
    set_precision,
    ste_fake_quantize,
)


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
def test_ste_forward_is_the_format_and_gradient_is_identity(bits, rng):
    w = (torch.randn(8, 100, generator=rng) * 0.3).requires_grad_(True)
    g = torch.randn(8, 100, generator=rng)
    y = ste_fake_quantize(w, bits)
    # Forward: exactly the stored format's dequantization at k bits (nesting property).
    assert torch.equal(y.detach(), quantize(w.detach()).dequantize(bits))
    y.backward(g)
    assert torch.equal(w.grad, g)  # dQ/dW = 1, bit for bit


def test_ste_rejects_bad_bits():
    with pytest.raises(InvalidBitsError):
        ste_fake_quantize(torch.ones(2, 64, requires_grad=True), 9)


def test_fake_quant_linear_matches_quantized_linear_and_shares_master_weights(rng):
    linear = nn.Linear(96, 5)
    fq = FakeQuantLinear.from_linear(linear)
    assert fq.weight is linear.weight and fq.bias is linear.bias
    x = torch.randn(3, 96, generator=rng)
    assert torch.equal(fq(x), linear(x))  # bits None: plain float
    fq.bits = 4
    expected = torch.nn.functional.linear(x, fake_quantize(linear.weight, 4), linear.bias)
    assert torch.equal(fq(x), expected)
    assert "E5M4" in repr(fq)


def test_attach_selects_export_layers_keeps_state_dict_and_detaches(tiny):
    model = tiny.model
    keys = list(model.state_dict())
    ids = torch.tensor([[5, 17, 42, 7]])
    before = model(ids).logits
    names = attach_fake_quant(model)
    assert names == select_sefp_linears(model) and sorted(fake_quant_layers(model)) == sorted(names)
    assert list(model.state_dict()) == keys  # same parameter names: checkpoints load into plain HF models
    assert attach_fake_quant(model) == names  # idempotent
    set_precision(model, None)
    assert torch.equal(model(ids).logits, before)
    set_precision(model, 3)
    assert not torch.equal(model(ids).logits, before)
    detach_fake_quant(model)
    assert not fake_quant_layers(model)
    assert type(model.get_submodule(names[0])) is nn.Linear
    assert torch.equal(model(ids).logits, before)


def test_gradients_reach_master_weights_at_low_precision(tiny):
    model = tiny.model
    attach_fake_quant(model)
    set_precision(model, 3)
    model(torch.tensor([[1, 2, 3, 4, 5]])).logits.square().mean().backward()
    grad = model.get_submodule("model.layers.0.self_attn.q_proj").weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_set_precision_errors(tiny):
    with pytest.raises(ValueError, match="attach_fake_quant"):
        set_precision(tiny.model, 4)
    attach_fake_quant(tiny.model)
    with pytest.raises(InvalidBitsError):
        set_precision(tiny.model, 2)


@pytest.mark.parametrize("rule,exponent_rule", [("center", "floor"), ("fitted", "search")])
def test_training_sees_the_export_rule_per_packed_layer(tiny, rule, exponent_rule):
    """Fake-quant through a rule computes exactly what export freezes: quantize_layer on the packed weight."""
    from otaro_export.reconstruction import export_units, quantize_layer, split_unit, unit_weight
    from otaro_export.train.fake_quant import refresh_encodings

    model = tiny.model
    attach_fake_quant(model, reconstruction=rule, exponent_rule=exponent_rule)
    layers = fake_quant_layers(model)
    assert all(m.reconstruction == rule and m.exponent_rule == exponent_rule for m in layers.values())
    unit = export_units(model, include_lm_head=False)[0]  # qkv_proj: three members, one table
    q, levels = quantize_layer(unit_weight(model, unit), rule, exponent_rule)
    for bits in (3, 4, 8):
        expected = split_unit(unit, model, q.dequantize(bits, levels))
        for name in unit.members:
            got = ste_fake_quantize(layers[name].weight, bits, layers[name].levels, layers[name].exponents)
            assert torch.equal(got, expected[name])
    # after a weight update, a refresh re-encodes from the new weights
    with torch.no_grad():
        layers[unit.members[0]].weight.mul_(1.5)
    refresh_encodings(model)
    q, levels = quantize_layer(unit_weight(model, unit), rule, exponent_rule)
    assert torch.equal(layers[unit.members[0]].levels, levels)
    set_precision(model, 3)
    x = torch.randn(2, 5, model.config.hidden_size)
    layer = layers[unit.members[0]]
    expected = torch.nn.functional.linear(
        x, split_unit(unit, model, q.dequantize(3, levels))[unit.members[0]], layer.bias
    )
    assert torch.allclose(layer(x), expected)
    assert rule in repr(layer)


def test_paper_rules_keep_the_fast_path(tiny):
    attach_fake_quant(tiny.model)
    assert all(m.levels is None and m.exponents is None for m in fake_quant_layers(tiny.model).values())
    with pytest.raises(ValueError, match="unknown reconstruction rule"):
        attach_fake_quant(tiny.model, reconstruction="nearest")


def test_attach_with_rules_weights_by_the_samples_statistics(tiny, chat_samples):
    from otaro_export.calibration import collect_input_stats
    from otaro_export.reconstruction import export_units, quantize_layer, unit_weight
    from otaro_export.train.fake_quant import attach_with_rules

    model = tiny.model
    unit = export_units(model, include_lm_head=False)[3]  # down_proj
    stats = collect_input_stats(model, chat_samples, [unit.members[0]])
    attach_with_rules(model, reconstruction="fitted", exponent_rule="search", samples=chat_samples)
    _, expected = quantize_layer(unit_weight(model, unit), "fitted", "search", stats[unit.members[0]].importance())
    assert torch.equal(fake_quant_layers(model)[unit.members[0]].levels, expected)


def test_floors_on_a_packed_layer_raise_all_its_members(tiny):
    from otaro_export.train.fake_quant import set_floors

    model = tiny.model
    attach_fake_quant(model)
    set_floors(model, {"model.layers.0.self_attn.qkv_proj": 5, "model.layers.1.mlp.down_proj": 6})
    layers = fake_quant_layers(model)
    assert [layers[f"model.layers.0.self_attn.{m}_proj"].min_bits for m in "qkv"] == [5, 5, 5]
    assert layers["model.layers.0.self_attn.o_proj"].min_bits is None
    set_precision(model, 3)
    x = torch.randn(2, 3, model.config.hidden_size)
    q = layers["model.layers.0.self_attn.q_proj"]
    assert torch.equal(q(x), torch.nn.functional.linear(x, fake_quantize(q.weight, 5), q.bias))
    with pytest.raises(ValueError, match="no fake-quant layer"):
        set_floors(model, {"lm_head": 5})


def test_a_tied_embedding_reads_the_fake_quant_lm_head(tiny):
    import copy

    from otaro_export.train.fake_quant import FakeQuantEmbedding, set_floors

    model = tiny.model
    keys = list(model.state_dict())
    ids = torch.tensor([[5, 17, 42, 5], [7, 7, 200, 3]])
    float_rows = model.get_input_embeddings()(ids)
    attach_fake_quant(model, quantize_lm_head=True, reconstruction="fitted", exponent_rule="search")
    head, embedding = model.lm_head, model.get_input_embeddings()
    assert isinstance(embedding, FakeQuantEmbedding) and embedding.weight is head.weight
    assert list(model.state_dict()) == keys
    assert torch.equal(embedding(ids), float_rows)  # full precision: the float rows
    set_precision(model, 3)
    set_floors(model, {"lm_head": 4})  # the embedding runs at the lm_head's max(bits, floor), table and exponents
    assert head.exponents is not None and head.levels is not None
    expected = ste_fake_quantize(head.weight, 4, head.levels, head.exponents)[ids]
    assert torch.equal(embedding(ids), expected)
    assert not torch.equal(expected, float_rows)
    # STE: each looked-up row gets the output gradient once per occurrence
    head.weight.requires_grad_(True)
    embedding(ids).sum().backward()
    counts = torch.bincount(ids.reshape(-1), minlength=head.weight.shape[0]).to(torch.float32)
    assert torch.equal(head.weight.grad, counts[:, None].expand_as(head.weight))
    # a copy follows its own lm_head; attaching again keeps the floor and the tie
    clone = copy.deepcopy(model)
    assert clone.get_input_embeddings().head is clone.lm_head
    attach_fake_quant(model, quantize_lm_head=True, reconstruction="fitted", exponent_rule="search")
    assert model.lm_head.min_bits == 4 and model.get_input_embeddings() is embedding and embedding.head is head
    detach_fake_quant(model)
    restored = model.get_input_embeddings()
    assert type(restored) is nn.Embedding and restored.weight is model.lm_head.weight


def test_a_float_or_untied_lm_head_leaves_the_embedding_float():
    from otaro_export.testing import tiny_causal_lm

    tied = tiny_causal_lm(seed=0).model
    attach_fake_quant(tied)  # lm_head float
    assert type(tied.get_input_embeddings()) is nn.Embedding
    untied = tiny_causal_lm(seed=0, tie_word_embeddings=False).model
    attach_fake_quant(untied, quantize_lm_head=True)
    assert type(untied.get_input_embeddings()) is nn.Embedding


def test_int8_activations_in_fake_quant_match_the_export_math():
    """act_int8_max_bits: the forward is fq(x) @ W_k^T at bits <= it (docs/FORMAT.md §9), x @ W_k^T above;
    the gradient reaches x straight through; attach_fake_quant rounds fitted levels as export stores them."""
    from otaro_export import activation_quant
    from otaro_export.testing import tiny_causal_lm
    from otaro_export.train.fake_quant import FakeQuantLinear, attach_fake_quant, fake_quant_layers

    torch.manual_seed(0)
    layer = FakeQuantLinear.from_linear(torch.nn.Linear(96, 8))
    layer.act_int8_max_bits = 4
    x = torch.randn(3, 96, requires_grad=True)
    for bits in (3, 4, 5):
        layer.bits = bits
        w = ste_fake_quantize(layer.weight, bits).detach()
        xin = activation_quant.fake_quantize(x.detach()) if bits <= 4 else x.detach()
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(xin, w, layer.bias), rtol=0, atol=1e-5)
    layer.bits = 3
    layer(x).sum().backward()
    want = ste_fake_quantize(layer.weight, 3).detach().sum(0).expand(3, 96)
    torch.testing.assert_close(x.grad, want)  # d/dx of fq is taken as 1

    model = tiny_causal_lm("llama").model
    attach_fake_quant(model, reconstruction="fitted", int8_activations=4)
    for module in fake_quant_layers(model).values():
        assert module.act_int8_max_bits == 4
        assert activation_quant.int8_grid_levels(module.levels, 3) and activation_quant.int8_grid_levels(
            module.levels, 4
        )
