from otaro_export.quantize_report import quantization_report
from otaro_export.testing import tiny_causal_lm


def test_report_rows_and_monotone_error():
    model = tiny_causal_lm().model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = quantization_report(model)
    assert [r.bits for r in report.rows] == [3, 4, 5, 6, 7, 8]
    sqnr = [r.sqnr_db for r in report.rows]
    assert all(a < b for a, b in zip(sqnr, sqnr[1:]))
    assert report.num_layers == 14 and report.num_weights > 0
    assert "E5M3" in report.to_table() and report.to_dict()["bits_per_weight_at_rest"] == 9.125
    # the report never modifies the model
    assert all((model.state_dict()[k] == v).all() for k, v in before.items())
