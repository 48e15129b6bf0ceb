import pytest
import torch
from torch.nn import functional as F

from otaro_export.testing import tiny_causal_lm
from otaro_export.train.fake_quant import attach_fake_quant, fake_quant_layers, set_precision
from otaro_export.train.losses import kl_to_teacher
from otaro_export.train.memory import GIB, estimate, main, model_shape, preset_shape


def test_presets_have_the_published_parameter_counts():
    one = preset_shape("llama-3.2-1b")
    eight = preset_shape("llama-3-8b")
    assert one.total == 1_235_814_400 and eight.total == 8_030_261_248  # the model cards' counts
    # q, k, v, o, gate, up, down per block: 2h^2 + 2h*kv + 3h*i (kv = 8 heads x 64 / 128 dims = h / 4)
    assert one.sefp_linear == 16 * (2 * 2048**2 + 2 * 2048 * 512 + 3 * 2048 * 8192)
    assert eight.sefp_linear == 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    assert eight.largest_block == eight.sefp_linear // 32 + 2 * 4096  # + two RMSNorm weights
    assert one.root_unit == 128256 * 2048 + 2048  # tied embedding + final norm stay in FSDP's root unit
    assert eight.root_unit == 4096  # untied embeddings are units of their own


def test_sharding_divides_the_per_parameter_terms_only():
    shape = preset_shape("llama-3-8b")
    ddp = estimate(shape, world_size=8, parallel="ddp", optimizer="adamw")
    fsdp = estimate(shape, world_size=8, parallel="fsdp", optimizer="adamw")
    assert ddp.weights == 8 * fsdp.weights and ddp.optimizer == 8 * fsdp.optimizer == 8 * 8 * shape.trained / 8
    assert ddp.quantized == fsdp.quantized == 4 * shape.sefp_linear  # saved full-size for backward either way
    assert ddp.total / GIB > 140 and fsdp.total / GIB < 80  # the 8B tuning state needs FSDP on 80 GB GPUs


@pytest.mark.parametrize(
    "hidden,intermediate,layers,vocab,batch,seq", [(256, 704, 2, 512, 2, 64), (128, 384, 3, 1024, 4, 32)]
)
def test_activation_estimate_bounds_what_autograd_keeps(hidden, intermediate, layers, vocab, batch, seq):
    """Bytes saved for backward in a real fake-quantized step (logits + KL), against the estimate."""
    model = tiny_causal_lm(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        vocab_size=vocab,
        num_attention_heads=4,
        num_key_value_heads=2,
    ).model
    attach_fake_quant(model)
    set_precision(model, 4)
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in fake_quant_layers(model).values():
        layer.weight.requires_grad_(True)
    saved: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        saved[storage.data_ptr()] = storage.nbytes()
        return t

    ids = torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.bool)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(input_ids=ids).logits
        kl_to_teacher(logits, F.log_softmax(torch.randn(batch * seq, vocab), -1), mask, "sum")
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    measured = sum(n for ptr, n in saved.items() if ptr not in params)
    est = estimate(model_shape(model), world_size=1, batch_size=batch, seq_len=seq)
    assert measured <= est.quantized + est.activations <= 1.6 * measured


def test_command_prints_a_line_per_world_size(capsys):
    main(["--preset", "llama-3.2-1b", "--world-size", "1", "8", "--parallel", "fsdp"])
    out = capsys.readouterr().out
    assert "1.236 B parameters" in out and "1 rank(s), fsdp" in out and "8 rank(s), fsdp" in out


def test_activation_checkpointing_keeps_one_block_of_quantized_weights():
    shape = preset_shape("llama-3-8b")
    full = estimate(shape, world_size=8, parallel="fsdp", optimizer="adamw", batch_size=16, seq_len=512)
    ac = estimate(
        shape,
        world_size=8,
        parallel="fsdp",
        optimizer="adamw",
        batch_size=16,
        seq_len=512,
        activation_checkpointing=True,
    )
    assert ac.quantized == 4 * shape.largest_block and ac.activations < full.activations / 3
    assert (ac.weights, ac.optimizer, ac.laa) == (full.weights, full.optimizer, full.laa)
