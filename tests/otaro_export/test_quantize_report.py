import torch

from otaro_export.quantize_report import layer_outliers, quantization_report
from otaro_export.testing import tiny_causal_lm


def test_report_rows_rules_and_monotone_error():
    model = tiny_causal_lm().model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = quantization_report(model)
    assert [r.bits for r in report.rows] == [3, 4, 5, 6, 7, 8]
    sqnr = [r.sqnr_db for r in report.rows]
    assert all(a < b for a, b in zip(sqnr, sqnr[1:]))
    # the exported (packed) layers: qkv, o, gate_up, down per block
    assert report.num_layers == 8 and report.num_weights > 0
    table = report.to_table()
    assert "E5M3" in table and "fitted / search" in table and "outliers" in table
    data = report.to_dict()
    assert data["bits_per_weight_at_rest"] == 9.125
    by_choice = {(r["rule"], r["exponent_rule"], r["bits"]): r["sqnr_db"] for r in data["rules"]}
    # the paper's row of the rules table is the plain report
    assert [by_choice[("floor", "floor", b)] for b in range(3, 9)] == sqnr
    # center and the fitted table beat the paper's truncation at every precision on the weights
    for b in range(3, 9):
        assert by_choice[("center", "floor", b)] > by_choice[("floor", "floor", b)]
        assert by_choice[("fitted", "floor", b)] >= by_choice[("center", "floor", b)] - 1e-9
    assert len(data["outliers"]) == 8
    # the report never modifies the model
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())


def test_outlier_statistics_on_a_planted_outlier():
    torch.manual_seed(0)
    w = torch.randn(8, 128) * 0.01
    w[2, 5] = 1.0  # one outlier: group (2, 0)'s exponent now serves a weight 100x the others
    stats = layer_outliers("planted", w)
    assert stats.groups == 16
    assert stats.outlier_group_share == 1 / 16
    # the other 63 weights of that group all truncate to 0 at E5M3: relative error 1
    assert stats.shift_in_outlier_groups > 0.99
    assert stats.shift_elsewhere < 0.5
    assert stats.exponent_clamped_share == 0.0 and stats.zero_groups == 0
    w[3, 64:] = 0.0
    w[4, 0] = 2.0**20  # exponent 20 clamps to 16 (and q saturates)
    stats = layer_outliers("clamped", w)
    assert stats.zero_groups == 1 and stats.exponent_clamped_share == 1 / 15
