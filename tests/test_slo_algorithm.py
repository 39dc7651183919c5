"""The SLO algorithm: detection, candidate prediction and the selection policies."""

from __future__ import annotations

import numpy as np
import pytest

from semipd.allocation import SMAllocation, SMGrid
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import CandidateBounds, PaperPredictor, ProfilePredictor, SLOAlgorithm, SLOConstraints


def window(ttft: np.ndarray | float = 50.0, tpot: np.ndarray | float = 20.0, n: int = 20, rate: float = 10.0,
           waiting: int = 0) -> AggregatedMetrics:
    ttft_s = np.full(n, float(ttft)) if np.isscalar(ttft) else np.asarray(ttft, dtype=float)
    tpot_s = np.full(n, float(tpot)) if np.isscalar(tpot) else np.asarray(tpot, dtype=float)
    return AggregatedMetrics(window_start_time=0.0, window_end_time=30.0, request_throughput=rate,
                             request_arrival_rate=rate, num_waiting_prefill=waiting,
                             ttft_samples=ttft_s, tpot_samples=tpot_s)


def profile(ttft_fn, tpot_fn, throughput_fn=lambda x, y: 10.0) -> ProfilePredictor:
    return ProfilePredictor(lambda a, m: (ttft_fn(a.prefill_percentage), tpot_fn(a.decode_percentage),
                                          throughput_fn(a.prefill_percentage, a.decode_percentage)))


HERE = SMAllocation(50, 50)


# -- detection ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("percentile", "violated"), [(50.0, False), (90.0, True), (95.0, True)])
def test_detection_uses_the_configured_percentile(percentile: float, violated: bool) -> None:
    samples = np.linspace(10.0, 200.0, 100)
    metrics = window(ttft=samples, tpot=samples / 10)
    algo = SLOAlgorithm(SLOConstraints(ttft_percentile=percentile, tpot_percentile=percentile))
    violations = algo.detect_slo_violations(algo.observe(metrics, HERE))
    expected = metrics.ttft_percentile(percentile) / 100.0
    assert ("ttft" in violations) is violated
    if violated:
        assert violations["ttft"] == pytest.approx(expected)
    assert "tpot" not in violations  # p <= 20 ms against 50 ms
    assert algo.should_adjust_resources(metrics, HERE) is violated


def test_threshold_is_hysteresis() -> None:
    algo = SLOAlgorithm(SLOConstraints())
    assert not algo.should_adjust_resources(window(ttft=109.0, tpot=54.0), HERE)
    violations = algo.detect_slo_violations(algo.observe(window(ttft=111.0, tpot=56.0), HERE))
    assert violations == pytest.approx({"ttft": 1.11, "tpot": 1.12})


def test_min_samples_before_judging() -> None:
    algo = SLOAlgorithm(SLOConstraints(), min_samples=10)
    assert not algo.should_adjust_resources(window(ttft=500.0, tpot=500.0, n=9), HERE)
    assert algo.should_adjust_resources(window(ttft=500.0, tpot=500.0, n=10), HERE)


def test_queue_signal_raises_ttft_before_the_percentile_moves() -> None:
    algo = SLOAlgorithm(SLOConstraints(), queue_min_waiting=8)
    quiet = window(ttft=60.0, rate=20.0, waiting=3)  # Little: 3 / 20 = 150 ms, but too few waiting to trust
    assert not algo.should_adjust_resources(quiet, HERE)
    building = window(ttft=60.0, rate=20.0, waiting=40)  # 40 / 20 req/s = 2 s mean wait
    obs = algo.observe(building, HERE)
    assert obs.queue_ttft_ms == pytest.approx(2000.0) and obs.ttft_percentile_ms == pytest.approx(60.0)
    assert algo.detect_slo_violations(obs) == pytest.approx({"ttft": 20.0})
    assert algo.should_adjust_resources(window(ttft=60.0, n=0, rate=20.0, waiting=40), HERE)  # no samples yet
    off = SLOAlgorithm(SLOConstraints(), queue_min_waiting=None)
    assert not off.should_adjust_resources(building, HERE)


def test_queue_signal_moves_sms_to_prefill() -> None:
    algo = SLOAlgorithm(SLOConstraints(), predictor="paper")
    choice = algo.compute_optimal_allocation(window(ttft=60.0, tpot=20.0, rate=20.0, waiting=40), HERE)
    assert choice is not None and choice.prefill_percentage > 50


# -- selection ----------------------------------------------------------------------------------

def test_no_violation_keeps() -> None:
    ev = SLOAlgorithm(SLOConstraints()).evaluate(window(), HERE)
    assert ev.choice is None and ev.violations == {} and ev.candidates == () and "met" in ev.reason


def test_feasible_highest_throughput_wins() -> None:
    # TTFT violated at 50%; 60% and 70% prefill meet both SLOs; throughput peaks at 60.
    pred = profile(lambda x: 6000.0 / x, lambda y: 1000.0 / y, lambda x, y: 20.0 - abs(x - 60) / 10)
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred)
    ev = algo.evaluate(window(ttft=120.0), HERE)
    assert ev.violations.keys() == {"ttft"}
    assert ev.choice == SMAllocation(60, 40)
    assert "highest predicted throughput" in ev.reason
    assert ev.current is not None and not ev.current.meets_slo
    feasible = {c.allocation for c in ev.candidates if c.meets_slo}
    assert SMAllocation(60, 40) in feasible and SMAllocation(70, 30) in feasible
    assert all(c.predicted_ttft is not None for c in ev.candidates)


def test_throughput_ties_go_to_headroom_then_to_the_smaller_move() -> None:
    pred = profile(lambda x: 6000.0 / x, lambda y: 1000.0 / y)  # constant throughput
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred, bounds=CandidateBounds(max_steps=2))
    # Headroom: worst ratio of 60/40 is max(1.0, 0.5) = 1.0, of 70/30 max(0.86, 0.67) = 0.86.
    assert algo.compute_optimal_allocation(window(ttft=120.0), HERE) == SMAllocation(70, 30)
    flat = profile(lambda x: 90.0 if x > 50 else 120.0, lambda y: 40.0)  # equal headroom: smallest move
    algo = SLOAlgorithm(SLOConstraints(), predictor=flat, bounds=CandidateBounds(max_steps=2))
    assert algo.compute_optimal_allocation(window(ttft=120.0), HERE) == SMAllocation(60, 40)


def test_none_feasible_picks_the_smallest_worst_ratio_if_it_improves() -> None:
    pred = profile(lambda x: 9000.0 / x, lambda y: 1000.0 / y)  # TTFT 100 needs x >= 90: out of reach
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred)
    ev = algo.evaluate(window(ttft=180.0), HERE)
    assert not any(c.meets_slo for c in ev.candidates)
    assert ev.choice == SMAllocation(80, 20)  # 9000/80 = 112.5 -> 1.125, the lowest worst ratio
    assert ev.current is not None and ev.current.worst_ratio == pytest.approx(1.8)
    assert "lowest predicted worst ratio" in ev.reason


def test_none_feasible_and_no_improvement_keeps() -> None:
    # Prefill is hopeless and gains little from SMs; decode would pay dearly.
    pred = profile(lambda x: 300.0 - x / 10, lambda y: 2400.0 / y)
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred, min_improvement=0.05)
    ev = algo.evaluate(window(ttft=295.0), HERE)
    assert ev.choice is None and "keep" in ev.reason
    assert algo.compute_optimal_allocation(window(ttft=295.0), HERE) is None


def test_both_violated_balances_the_misses() -> None:
    # At 50/50 both miss: TTFT 160 (1.6x), TPOT 60 (1.2x). Moving to prefill trades TPOT for TTFT.
    pred = profile(lambda x: 8000.0 / x, lambda y: 3000.0 / y)
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred, bounds=CandidateBounds(adjustment_step=5, max_steps=2))
    ev = algo.evaluate(window(ttft=160.0, tpot=60.0), HERE)
    assert ev.violations.keys() == {"ttft", "tpot"}
    assert ev.choice == SMAllocation(55, 45)
    # 55/45: max(145/100, 66.7/50) = 1.45; 60/40: max(1.33, 1.5) = 1.5.
    ratios = {c.allocation: c.worst_ratio for c in ev.candidates}
    assert ratios[SMAllocation(55, 45)] == pytest.approx(8000 / 55 / 100)
    assert min(ratios.values()) == ratios[SMAllocation(55, 45)]


def test_monotone_moves_never_take_sms_from_the_violating_phase() -> None:
    # A model that believes less prefill helps TTFT (as the seed's heuristic can from above 50%).
    wrong = profile(lambda x: x, lambda y: 10.0, lambda x, y: 10.0 + y)
    guarded = SLOAlgorithm(SLOConstraints(), predictor=wrong)
    ev = guarded.evaluate(window(ttft=200.0), HERE)
    assert ev.candidates and all(c.prefill_percentage > 50 for c in ev.candidates)  # e.g. not 50/40 either
    unguarded = SLOAlgorithm(SLOConstraints(), predictor=wrong, monotone_moves=False)
    choice = unguarded.compute_optimal_allocation(window(ttft=200.0), HERE)
    assert choice is not None and choice.prefill_percentage < 50
    tpot_only = guarded.evaluate(window(tpot=80.0), HERE)
    assert tpot_only.candidates and all(c.decode_percentage > 50 for c in tpot_only.candidates)
    both = guarded.evaluate(window(ttft=200.0, tpot=80.0), HERE)
    assert any(c.prefill_percentage < 50 for c in both.candidates)  # both miss: any trade is open


def test_a_forecasting_predictor_acts_before_the_window_shows_a_miss() -> None:
    # The profile knows the load will need 60 ms per token at 50% decode; the window still reads 20 ms.
    pred = profile(lambda x: 50.0, lambda y: 3000.0 / y)
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred)
    assert pred.forecasts
    ev = algo.evaluate(window(ttft=50.0, tpot=20.0), HERE)
    assert ev.violations == pytest.approx({"tpot": 1.2})
    assert ev.choice is not None and ev.choice.decode_percentage >= 60
    observed_miss = algo.detect_slo_violations(algo.observe(window(ttft=50.0, tpot=90.0), HERE))
    assert observed_miss == pytest.approx({"tpot": 1.8})  # the larger of observation and forecast
    heuristic = SLOAlgorithm(SLOConstraints(), predictor="heuristic")
    assert not heuristic.predictor.forecasts
    assert not heuristic.should_adjust_resources(window(ttft=50.0, tpot=20.0), SMAllocation(80, 20))


def test_one_decision_makes_the_whole_move_a_violation_needs() -> None:
    # TTFT 3x over at 50/50; the model says 7000 / x, so x >= 70 meets it. The seed's two 5% steps cannot
    # get there; by default every split in the bounds is a candidate and one move lands where the two
    # SLOs' predicted ratios balance best: 75/25 (TTFT 0.93x, TPOT 0.8x).
    pred = profile(lambda x: 7000.0 / x, lambda y: 1000.0 / y)
    seed = SLOAlgorithm(SLOConstraints(), predictor=pred, bounds=CandidateBounds(adjustment_step=5, max_steps=2))
    wide = SLOAlgorithm(SLOConstraints(), predictor=pred, bounds=CandidateBounds(adjustment_step=5))
    assert seed.compute_optimal_allocation(window(ttft=300.0), HERE) == SMAllocation(60, 40)  # still short
    assert wide.compute_optimal_allocation(window(ttft=300.0), HERE) == SMAllocation(75, 25)


def test_stay_when_a_forecast_says_the_current_split_meets_both() -> None:
    # The window still reads TTFT at 2x (an old load); the profile says this split meets both now.
    pred = profile(lambda x: 80.0, lambda y: 30.0)
    ev = SLOAlgorithm(SLOConstraints(), predictor=pred).evaluate(window(ttft=200.0), HERE)
    assert ev.violations.keys() == {"ttft"} and ev.choice is None
    assert ev.current is not None and ev.current.meets_slo and "current split is predicted to meet" in ev.reason
    # A predictor that scales the window (paper: the prediction for the current split is the observation)
    # never vouches for the current split.
    paper = SLOAlgorithm(SLOConstraints(), predictor="paper").evaluate(window(ttft=200.0), HERE)
    assert paper.choice is not None and paper.choice.prefill_percentage > 50


def test_require_feasible_never_trades_one_miss_for_another() -> None:
    # TTFT at 1.05x (within the threshold): a move must be predicted to meet both SLOs.
    tight = profile(lambda x: 5250.0 / x, lambda y: 2450.0 / y)  # 60/40: TTFT 87.5, TPOT 61 - no split meets both
    algo = SLOAlgorithm(SLOConstraints(), predictor=tight)
    obs = algo.observe(window(ttft=105.0, tpot=49.0), HERE)
    assert algo.detect_slo_violations(obs) == {}
    strict = algo.decide(obs, violations={"ttft": 1.05}, require_feasible=True)
    assert strict.choice is None and "no violation" in strict.reason
    roomy = SLOAlgorithm(SLOConstraints(), predictor=profile(lambda x: 5250.0 / x, lambda y: 1000.0 / y))
    moved = roomy.decide(roomy.observe(window(ttft=105.0), HERE), violations={"ttft": 1.05}, require_feasible=True)
    assert moved.choice is not None and moved.choice.prefill_percentage > 50


def test_anticipation_needs_a_real_gain() -> None:
    algo = SLOAlgorithm(SLOConstraints(), predictor=profile(lambda x: 50.0, lambda y: 2250.0 / y),
                        rebalance_above=0.8, rebalance_gain=0.25)
    ratios = {"ttft": 0.5, "tpot": 0.9}
    assert algo.pressing(ratios) == {"tpot": 0.9} and algo.pressing({"ttft": 0.5, "tpot": 0.7}) == {}
    obs = algo.observe(window(ttft=50.0, tpot=45.0), HERE)
    moved = algo.decide(obs, violations={"tpot": 0.9}, require_feasible=True, min_gain=0.25)
    assert moved.choice is not None and moved.choice.decode_percentage > 50  # 2250 / 80 = 28 ms: 0.56x
    capped = SLOAlgorithm(SLOConstraints(), predictor=algo.predictor, bounds=CandidateBounds(max_decode_percentage=60))
    small = capped.decide(obs, violations={"tpot": 0.9}, require_feasible=True, min_gain=0.25)
    assert small.choice is None and "lower the worst ratio by 25%" in small.reason  # 60% decode: 0.75x, 17% less
    # Balanced: TTFT and TPOT both at 0.9x; the paper predictor (scaling the window) sees TTFT pay for
    # what TPOT gains.
    balanced = SLOAlgorithm(SLOConstraints(), predictor="paper")
    kept = balanced.decide(balanced.observe(window(ttft=90.0, tpot=45.0), HERE), violations={"tpot": 0.9},
                           require_feasible=True, min_gain=0.25)
    assert kept.choice is None and kept.reason.endswith("keep (no violation to trade misses for)")
    assert all(c.worst_ratio > 1 for c in kept.candidates)


def test_no_candidate_in_bounds_keeps() -> None:
    bounds = CandidateBounds(min_prefill_percentage=50, max_prefill_percentage=50, min_decode_percentage=50,
                             max_decode_percentage=50)
    ev = SLOAlgorithm(SLOConstraints(), bounds=bounds).evaluate(window(ttft=300.0), HERE)
    assert ev.choice is None and ev.candidates == () and "no candidate" in ev.reason


def test_grid_choice_is_realisable() -> None:
    grid = SMGrid(132, 8, 8)
    algo = SLOAlgorithm(SLOConstraints(), predictor="heuristic")
    current = grid.allocation(96)  # 72.7/27.3 with TPOT far over
    choice = algo.compute_optimal_allocation(window(ttft=40.0, tpot=90.0), current, grid)
    assert choice is not None and choice.decode_percentage > current.decode_percentage
    grid.prefill_sms(choice)  # raises if not realisable


def test_learning_is_optional() -> None:
    pred = PaperPredictor()
    algo = SLOAlgorithm(SLOConstraints(), predictor=pred)
    algo.evaluate(window(ttft=150.0), HERE, learn=False)
    assert pred.describe()["ttft_points"] == 0
    algo.compute_optimal_allocation(window(ttft=150.0), HERE)
    assert pred.describe()["ttft_points"] == 1


@pytest.mark.parametrize(("kwargs", "field"), [({"min_samples": 0}, "min_samples"),
                                                ({"queue_min_waiting": 0}, "queue_min_waiting"),
                                                ({"min_improvement": 1.0}, "min_improvement"),
                                                ({"rebalance_above": 0.0}, "rebalance_above"),
                                                ({"rebalance_gain": 1.0}, "rebalance_gain"),
                                                ({"predictor": PaperPredictor(), "predictor_options": {"x": 1}},
                                                 "predictor_options")])
def test_validation(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SLOAlgorithm(SLOConstraints(), **kwargs)  # type: ignore[arg-type]
