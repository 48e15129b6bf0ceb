import pytest
import torch

from otaro_export import sefp
from otaro_export.reconstruction import (
    FITTED_BITS,
    export_units,
    fit_levels,
    quantize_layer,
    split_unit,
    unit_weight,
)


def _layer(rng, n=48, k=200, outlier_cols=(3, 77)):
    """A synthetic linear: heavy-tailed weights, a few input columns driven 30x harder than the rest."""
    w = torch.randn(n, k, generator=rng) * torch.rand(n, k, generator=rng).pow(2) * 0.05
    importance = torch.rand(k, generator=rng) + 0.1
    importance[[c % k for c in outlier_cols]] *= 900.0
    return w, importance


def _weighted_error(w, approx, importance):
    return float(((w - approx).pow(2) * importance).sum())


def _direct(q: sefp.SEFPWeight, bits: int, levels: torch.Tensor) -> torch.Tensor:
    """value = (-1)^s * levels[k-3, q_k >> (8-k)] * 2^(e-7), element by element (docs/FORMAT.md §3)."""
    n, k_pad = q.magnitudes.shape
    out = torch.empty(n, k_pad, dtype=torch.float64)
    for r in range(n):
        for c in range(k_pad):
            j = (int(q.magnitudes[r, c]) & sefp.mantissa_mask(bits)) >> (8 - bits)
            e = int(q.exponents[r, c // 64])
            value = float(levels[bits - 3, j]) * 2.0 ** (e - 7)
            out[r, c] = -value if int(q.signs[r, c]) else value
    return out[:, : q.in_features].to(torch.float32)


def test_floor_and_center_tables():
    floor, center = sefp.floor_levels(), sefp.center_levels()
    for row, k in enumerate(sefp.SUPPORTED_BITS):
        j = torch.arange(1 << k, dtype=torch.float32)
        assert torch.equal(floor[row, : 1 << k], j * 2 ** (8 - k))
        assert torch.equal(center[row, : 1 << k], (j + 0.5) * 2 ** (8 - k))
        assert not floor[row, 1 << k :].any() and not center[row, 1 << k :].any()


@pytest.mark.parametrize("rule", ["floor", "center", "fitted"])
@pytest.mark.parametrize("exponent_rule", ["floor", "search"])
def test_rule_tables_are_valid_and_dequantize_matches_the_formula(rng, rule, exponent_rule):
    w, importance = _layer(rng, n=4, k=130)
    q, levels = quantize_layer(w, rule, exponent_rule, importance)
    if rule == "floor":
        assert levels is None
        table = sefp.floor_levels()
    else:
        table = sefp.check_levels(levels)
        # rows k >= 5 are center for both center and fitted
        assert torch.equal(table[2:], sefp.center_levels()[2:])
    if rule == "center":
        assert torch.equal(table, sefp.center_levels())
    for bits in sefp.SUPPORTED_BITS:
        got = q.dequantize(bits, levels)
        assert torch.equal(got, _direct(q, bits, table))


def test_floor_rule_is_the_paper_encoder_and_decoder(rng):
    w, _ = _layer(rng)
    q, levels = quantize_layer(w, "floor", "floor")
    paper = sefp.quantize(w)
    assert levels is None
    assert torch.equal(q.magnitudes, paper.magnitudes) and torch.equal(q.exponents, paper.exponents)
    for bits in sefp.SUPPORTED_BITS:
        assert torch.equal(q.dequantize(bits), paper.dequantize(bits))


def test_fitted_rule_lowers_the_weighted_error_below_center(rng):
    w, importance = _layer(rng)
    q = sefp.quantize(w)
    fitted = fit_levels(w, q, importance)
    for bits in FITTED_BITS:
        center_err = _weighted_error(w, q.dequantize(bits, sefp.center_levels()), importance)
        fitted_err = _weighted_error(w, q.dequantize(bits, fitted), importance)
        assert fitted_err < 0.97 * center_err, (bits, fitted_err, center_err)
    # the unweighted fit is the least-squares optimum of the plain error: no worse than center
    plain = fit_levels(w, q, None)
    for bits in FITTED_BITS:
        assert _weighted_error(w, q.dequantize(bits, plain), 1.0) <= _weighted_error(
            w, q.dequantize(bits, sefp.center_levels()), 1.0
        )


def test_fitted_levels_are_the_per_bin_least_squares_solution(rng):
    w, importance = _layer(rng, n=8, k=64)
    q = sefp.quantize(w)
    levels = fit_levels(w, q, importance, bits=(3,))
    step = 2.0 ** (q.exponents.to(torch.float64) - 7)  # [N, 1]
    index = q.magnitudes.to(torch.int64) >> 5
    d = importance.to(torch.float64)
    for j in range(8):
        members = index == j
        if not members.any():
            assert levels[0, j] == sefp.center_levels()[0, j]
            continue
        u = step.expand_as(members)[members]
        dd = d.expand_as(members)[members]
        expected = (dd * u * w.abs().to(torch.float64)[members]).sum() / (dd * u * u).sum()
        assert float(levels[0, j]) == pytest.approx(float(expected), rel=1e-6)


def test_search_exponents_stay_valid_for_any_sefp_reader(rng):
    w, importance = _layer(rng)
    w[0, :64] = 0.0  # an all-zero group
    w[1, 5] = 1e9  # a saturating group at the exponent ceiling
    floor = sefp.quantize(w)
    q = sefp.quantize(w, exponent_rule="search", importance=importance)
    assert q.magnitudes.dtype == torch.uint8 and q.exponents.dtype == torch.int8
    assert int(q.exponents.min()) >= sefp.EXPONENT_MIN and int(q.exponents.max()) <= sefp.EXPONENT_MAX
    delta = floor.exponents.to(torch.int32) - q.exponents.to(torch.int32)
    assert set(delta.unique().tolist()) <= {0, 1}
    assert bool((delta == 1).any()), "the search never lowered an exponent on a heavy-tailed layer"
    assert int(q.exponents[0, 0]) == sefp.EXPONENT_MIN
    # signs follow the weight; magnitudes are the format's q for the chosen exponents
    groups = sefp._grouped(w)
    expected = torch.floor(groups.abs() * 2.0 ** (7 - q.exponents.to(torch.float32)).unsqueeze(-1)).clamp(max=255)
    assert torch.equal(q.magnitudes.reshape(groups.shape).to(torch.float32), expected)


def test_search_lowers_the_precision_weighted_error(rng):
    w, importance = _layer(rng, n=64, k=256)
    center = sefp.center_levels()
    floor = sefp.quantize(w)
    searched = sefp.quantize(w, exponent_rule="search", levels=center, importance=importance)
    d = sefp.padded_importance(importance, w.shape[1])[: w.shape[1]]
    ratios = [
        _weighted_error(w, searched.dequantize(b, center), d) / _weighted_error(w, floor.dequantize(b, center), d)
        for b in sefp.SUPPORTED_BITS
    ]
    # the objective is the sum of relative errors: it went down, and E5M3 gained
    assert sum(ratios) < len(ratios)
    assert ratios[0] < 1.0


@pytest.mark.parametrize("rule", ["center", "fitted"])
def test_nesting_holds_for_every_rule_and_encoder(rng, rule):
    """Dequantizing precision k from the stored M8 equals quantizing straight at k with the same exponents."""
    w, importance = _layer(rng, n=16, k=100)
    q, levels = quantize_layer(w, rule, "search", importance)
    for bits in sefp.SUPPORTED_BITS:
        direct = sefp.fake_quantize(w, bits, levels=levels, exponents=q.exponents)
        assert torch.equal(direct, q.dequantize(bits, levels))


def test_fake_quantize_without_options_is_the_paper(rng):
    w, _ = _layer(rng)
    for bits in sefp.SUPPORTED_BITS:
        assert torch.equal(sefp.fake_quantize(w, bits), sefp.quantize(w).dequantize(bits))
        assert torch.equal(sefp.fake_quantize(w, bits, levels=sefp.floor_levels()), sefp.quantize(w).dequantize(bits))


def test_bad_inputs_raise_clear_errors(rng):
    w, importance = _layer(rng)
    with pytest.raises(ValueError, match="unknown reconstruction rule"):
        quantize_layer(w, "nearest")
    with pytest.raises(ValueError, match="unknown exponent rule"):
        sefp.quantize(w, exponent_rule="ceil")
    with pytest.raises(ValueError, match="input features"):
        quantize_layer(w, "fitted", importance=importance[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        quantize_layer(w, "fitted", importance=-importance)
    with pytest.raises(ValueError, match="exponents must be"):
        sefp.fake_quantize(w, 3, exponents=torch.zeros(1, 1, dtype=torch.int8))


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def test_export_units_pack_members_like_the_manifest():
    model = _tiny_llama()
    units = export_units(model)
    names = [u.name for u in units]
    assert names == [
        "model.layers.0.self_attn.qkv_proj",
        "model.layers.0.self_attn.o_proj",
        "model.layers.0.mlp.gate_up_proj",
        "model.layers.0.mlp.down_proj",
        "model.layers.1.self_attn.qkv_proj",
        "model.layers.1.self_attn.o_proj",
        "model.layers.1.mlp.gate_up_proj",
        "model.layers.1.mlp.down_proj",
        "lm_head",
    ]
    qkv = units[0]
    assert qkv.kind == "qkv_proj" and qkv.layer_index == 0 and units[-1].layer_index is None
    packed = unit_weight(model, qkv)
    assert packed.shape == (64 + 32 + 32, 64)
    parts = split_unit(qkv, model, packed)
    for name, part in parts.items():
        assert torch.equal(part, model.get_submodule(name).weight)
    assert [u.name for u in export_units(model, include_lm_head=False)] == names[:-1]


def test_plan_floors_spends_the_budget_where_it_saves_most():
    from otaro_export.reconstruction import plan_floors

    sizes = {"a": (64, 64), "b": (64, 64), "c": (128, 64)}
    sens = {
        "a": {3: 1.0, 4: 0.5, 5: 0.1, 6: 0.05, 7: 0.02, 8: 0.01},
        "b": {3: 0.2, 4: 0.1, 5: 0.05, 6: 0.02, 7: 0.01, 8: 0.0},
        "c": {3: 1.2, 4: 0.6, 5: 0.2, 6: 0.1, 7: 0.05, 8: 0.02},
    }
    none = plan_floors(sizes, sens, budget_bits=4.125)
    assert none.floors == {} and none.bits_per_weight[3] == 4.125
    assert none.predicted_kl[3] == 1.0 + 0.2 + 1.2
    # "a" saves 0.9 per 64x64 block, "c" 1.0 per two blocks: "a" first; with room for one block only "a" fits
    one = plan_floors(sizes, sens, budget_bits=4.125 + 2.0 / 4)
    assert one.floors == {"a": 5}
    assert one.effective_bits("a", 3) == 5 and one.effective_bits("a", 6) == 6 and one.effective_bits("c", 3) == 3
    assert one.bits_per_weight[3] <= 4.625 and one.predicted_kl[3] == 0.1 + 0.2 + 1.2
    # E5M4 and E5M5 read the same planes: a floor of 5 costs nothing at E5M4
    assert one.bytes_per_token[4] == none.bytes_per_token[4]
    assert plan_floors(sizes, sens, budget_bits=9.0).floors == {"a": 5, "b": 5, "c": 5}


def test_fisher_and_recommended_floors_on_a_tiny_model():
    from otaro_export.calibration import calibration_samples, collect_input_stats, fisher_diagonal
    from otaro_export.reconstruction import floor_plan, recommend_floors
    from otaro_export.testing import tiny_causal_lm

    loaded = tiny_causal_lm()
    model = loaded.model
    samples = calibration_samples(model, loaded.tokenizer, num_samples=2, gen_tokens=8)
    names = ["model.layers.0.self_attn.q_proj", "lm_head"]
    stats = collect_input_stats(model, samples, names)
    assert stats["lm_head"].second_moment.shape == (64,) and stats["lm_head"].tokens > 0
    assert bool((stats["lm_head"].second_moment > 0).all())
    f1 = fisher_diagonal(model, samples, names)
    f2 = fisher_diagonal(model, samples, names)
    assert f1["lm_head"].shape == model.lm_head.weight.shape
    assert all(torch.equal(f1[n], f2[n]) for n in names) and bool((f1["lm_head"] >= 0).all())
    assert float(f1["model.layers.0.self_attn.q_proj"].sum()) > 0
    assert all(p.grad is None for p in model.parameters())
    plan = floor_plan(model, samples=samples, budget_bits=5.0)
    assert recommend_floors(model, samples=samples, budget_bits=5.0) == plan.floors
    assert set(plan.floors.values()) <= {5} and plan.bits_per_weight[3] <= 5.0
    assert plan.predicted_kl[3] >= plan.predicted_kl[8] >= 0
