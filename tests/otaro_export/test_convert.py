import pytest
import torch

from otaro_export import convert
from otaro_export.errors import NonFiniteWeightError, UnsupportedModelError
from otaro_export.sefp_linear import SEFPLinear
from otaro_export.testing import tiny_causal_lm


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mistral"])
def test_converts_every_decoder_linear(model_type):
    model = tiny_causal_lm(model_type).model
    report = convert.convert_model(model)
    # 2 layers x (q, k, v, o, gate, up, down)
    assert len(report.layers) == 14
    assert all(name.startswith("model.layers.") for name in report.names)
    assert isinstance(model.lm_head, torch.nn.Linear) and not isinstance(model.lm_head, SEFPLinear)
    assert set(convert.sefp_layers(model)) == set(report.names)
    assert "14 linear layers" in report.summary()


def test_quantize_lm_head_opt_in():
    model = tiny_causal_lm().model
    report = convert.convert_model(model, quantize_lm_head=True)
    assert report.names[-1] == "lm_head" and isinstance(model.lm_head, SEFPLinear)


def test_converted_model_equals_dequantized_reference():
    loaded = tiny_causal_lm("qwen2")  # qwen2: q/k/v carry biases
    model = loaded.model
    convert.convert_model(model)
    ids = torch.randint(0, 259, (1, 12))
    for bits in (3, 8):
        convert.set_bits(model, bits)
        ref = convert.dequantized_copy(model, bits)
        with torch.no_grad():
            # dequantized weights are exact; F.linear vs the op's F.linear is the same math
            torch.testing.assert_close(model(ids).logits, ref(ids).logits, rtol=0, atol=0)


def test_lower_precision_moves_logits_more():
    model = tiny_causal_lm().model
    fp = tiny_causal_lm().model
    convert.convert_model(model)
    ids = torch.randint(0, 259, (1, 16))
    with torch.no_grad():
        ref = fp(ids).logits
        errs = []
        for bits in (3, 8):
            convert.set_bits(model, bits)
            errs.append((model(ids).logits - ref).abs().mean().item())
    assert errs[0] > errs[1] > 0


def test_unsupported_architecture_lists_supported():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50))
    with pytest.raises(UnsupportedModelError, match="llama, qwen2, mistral"):
        convert.convert_model(model)
    with pytest.raises(UnsupportedModelError, match="llama"):
        convert.check_supported(torch.nn.Linear(2, 2))


def test_nan_weight_names_layer_and_changes_nothing():
    model = tiny_causal_lm().model
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        convert.convert_model(model)


def test_set_bits_validates():
    model = tiny_causal_lm().model
    convert.convert_model(model)
    with pytest.raises(ValueError):
        convert.set_bits(model, 9)
