import pytest

from otaro_export.bench.switching import switch_ratios


def test_switch_ratio_is_geometric_mean_of_per_precision_ratios():
    fixed = {3: [1.0, 1.0, 1.0], 8: [2.0, 2.0, 2.0]}
    alternating = [(3, 1.1), (8, 2.0), (3, 1.1), (8, 2.0)]
    out = switch_ratios(fixed, alternating)
    assert out["per_bits_ratio"] == {"3": pytest.approx(1.1), "8": pytest.approx(1.0)}
    assert out["switch_ratio"] == pytest.approx(1.1**0.5)
    assert out["fixed_step_ms"]["8"] == pytest.approx(2000.0)


def test_switch_ratio_needs_both_schedules():
    with pytest.raises(ValueError, match="E5M8"):
        switch_ratios({3: [1.0], 8: [1.0]}, [(3, 1.0)])


def test_round_noise_is_the_largest_spread_of_round_medians():
    from otaro_export.bench.switching import round_noise

    assert round_noise({3: [[1.0, 1.0], [1.1, 1.1]], 8: [[2.0], [2.0]]}) == pytest.approx(0.1)
    assert round_noise({3: [[1.0]]}) == 0.0


def test_switching_goal_allows_measured_noise():
    from otaro_export.bench.report import evaluate_goals

    def goal(switch):
        return next(g for g in evaluate_goals([], switch, {}, None, None) if g.name == "precision switching cost")

    assert goal({"onnx fused": {"switch_ratio": 1.08, "noise": 0.10}}).met is True
    assert goal({"onnx fused": {"switch_ratio": 1.08, "noise": 0.01}}).met is False


def test_faster_when_alternating_is_no_cost():
    from otaro_export.bench.report import evaluate_goals

    goal = next(
        g
        for g in evaluate_goals([], {"onnx fused": {"switch_ratio": 0.9, "noise": 0.01}}, {}, None, None)
        if g.name == "precision switching cost"
    )
    assert goal.met is True
