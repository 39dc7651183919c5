"""Predictors: the seed's heuristic, the registry, and the profile slot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import (
    HeuristicPredictor,
    Observation,
    PaperPredictor,
    Prediction,
    Predictor,
    ProfilePredictor,
    SLOConstraints,
    available_predictors,
    create_predictor,
    parse_predictor_spec,
    register_predictor,
)


def _observation(ttft: float | None, tpot: float | None, throughput: float = 8.0,
                 alloc: SMAllocation = SMAllocation(70, 30)) -> Observation:
    metrics = AggregatedMetrics(
        request_throughput=throughput,
        ttft_samples=np.full(20, ttft) if ttft else np.empty(0),
        tpot_samples=np.full(20, tpot) if tpot else np.empty(0),
    )
    return Observation.from_metrics(metrics, alloc, SLOConstraints())


def _seed_prediction(candidate: SMAllocation, ttft_p95: float, tpot_p95: float, throughput: float,
                     slo: SLOConstraints) -> tuple[float, float, float]:
    """The seed's section 2.4, transcribed."""
    base_ttft = ttft_p95 if ttft_p95 > 0 else slo.ttft_target_ms
    base_tpot = tpot_p95 if tpot_p95 > 0 else slo.tpot_target_ms
    prefill_factor = candidate.prefill_percentage / 50.0
    decode_factor = candidate.decode_percentage / 50.0
    ttft = base_ttft / min(2.0, max(0.5, prefill_factor))
    tpot = base_tpot / min(2.0, max(0.5, decode_factor))
    balance_factor = 1.0 - abs(candidate.prefill_percentage - candidate.decode_percentage) / 100.0
    return ttft, tpot, throughput * (0.8 + 0.4 * balance_factor)


@pytest.mark.parametrize("split", [(10, 90), (20, 80), (40, 60), (50, 50), (70, 30), (80, 20), (99, 1)])
@pytest.mark.parametrize(("ttft", "tpot"), [(120.0, 40.0), (None, 80.0), (60.0, None), (None, None)])
def test_heuristic_is_exactly_the_seed(split: tuple[float, float], ttft: float | None, tpot: float | None) -> None:
    candidate = SMAllocation(*split)
    got = HeuristicPredictor().predict(candidate, _observation(ttft, tpot))
    want = _seed_prediction(candidate, ttft or 0.0, tpot or 0.0, 8.0, SLOConstraints())
    assert (got.ttft_ms, got.tpot_ms, got.throughput) == pytest.approx(want)


def test_heuristic_clamps_and_balance() -> None:
    obs = _observation(100.0, 50.0, throughput=10.0)
    p = HeuristicPredictor().predict(SMAllocation(10, 90), obs)
    assert p.ttft_ms == pytest.approx(200.0)  # factor 0.2 clamped to 0.5
    assert p.tpot_ms == pytest.approx(50.0 / 1.8)
    assert HeuristicPredictor().predict(SMAllocation(90, 10), obs).tpot_ms == pytest.approx(100.0)
    assert HeuristicPredictor().predict(SMAllocation(50, 50), obs).throughput == pytest.approx(12.0)


def test_registry_names_and_unknown() -> None:
    assert {"heuristic", "paper", "profile"} <= set(available_predictors())
    assert isinstance(create_predictor("heuristic"), HeuristicPredictor)
    assert isinstance(create_predictor("paper", history_size=5), PaperPredictor)
    with pytest.raises(ValueError, match="unknown.*heuristic"):
        create_predictor("oracle")


def test_register_custom_predictor_and_refuse_duplicates() -> None:
    name = "test-constant"
    if name not in available_predictors():

        @register_predictor(name)
        class Constant(Predictor):
            name = "test-constant"

            def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
                return Prediction(1.0, 1.0, 1.0)

    assert create_predictor(name).predict(SMAllocation(50, 50), _observation(1.0, 1.0)) == Prediction(1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="already registered"):
        register_predictor("heuristic")(HeuristicPredictor)


def test_profile_needs_a_profile() -> None:
    with pytest.raises(ValueError, match="needs a profile"):
        ProfilePredictor()
    with pytest.raises(ValueError, match="needs a profile"):
        create_predictor("profile")
    with pytest.raises(ValueError, match="callable"):
        ProfilePredictor(profile=42)  # type: ignore[arg-type]


def _synthetic_profile(allocation: SMAllocation, metrics: AggregatedMetrics) -> tuple[float, float, float]:
    x, y = allocation.prefill_percentage, allocation.decode_percentage
    load = metrics.request_arrival_rate
    return 1000.0 / (x - load) + 10.0, 400.0 / min(y, 60.0) + 2.0, min(load, x / 5.0)


def test_profile_with_a_callable_sees_the_window() -> None:
    metrics = AggregatedMetrics(request_arrival_rate=12.0)
    obs = Observation.from_metrics(metrics, SMAllocation(50, 50), SLOConstraints())
    pred = create_predictor("profile", profile=_synthetic_profile)
    got = pred.predict(SMAllocation(40, 60), obs)
    assert (got.ttft_ms, got.tpot_ms, got.throughput) == pytest.approx(_synthetic_profile(SMAllocation(40, 60),
                                                                                          metrics))
    assert pred.describe()["profile"] == "_synthetic_profile"


def test_profile_with_an_object() -> None:
    class Table:
        def predict(self, allocation: SMAllocation, metrics: AggregatedMetrics) -> tuple[float, float, float]:
            return 5000.0 / allocation.prefill_percentage, 1000.0 / allocation.decode_percentage, 3.0

    got = ProfilePredictor(Table()).predict(SMAllocation(25, 75), _observation(1.0, 1.0))
    assert (got.ttft_ms, got.tpot_ms, got.throughput) == pytest.approx((200.0, 1000.0 / 75, 3.0))


def test_predictor_specs_carry_an_argument_for_predictors_that_take_one() -> None:
    assert parse_predictor_spec("paper") == ("paper", None)
    assert parse_predictor_spec("profile:/tmp/p.json") == ("profile", "/tmp/p.json")
    for bad, match in (("paper:x", "takes no argument"), ("profile:", "empty"), ("oracle:x", "unknown"), ("", "empty")):
        with pytest.raises(ValueError, match=match):
            parse_predictor_spec(bad)
    with pytest.raises(ValueError, match="given twice"):
        create_predictor("profile:llama-3.1-8b-h100", profile=_synthetic_profile)


def test_profile_from_a_perf_model_name_forecasts_with_the_steady_state_model() -> None:
    """``profile:llama-3.1-8b-h100`` (the built-in H100 model, the default profile) predicts absolute
    latencies from the window's load: more prefill SMs, lower TTFT; the percentile comes from the SLO."""
    pred = create_predictor("profile:llama-3.1-8b-h100")
    assert pred.forecasts and pred.describe()["profile"] == "llama-3.1-8b-h100"
    metrics = AggregatedMetrics(window_end_time=30.0, request_arrival_rate=4.0, arrival_input_token_rate=8000.0,
                                request_throughput=4.0, output_token_throughput=400.0)
    p50 = Observation.from_metrics(metrics, SMAllocation(50, 50), SLOConstraints(ttft_percentile=50))
    p99 = Observation.from_metrics(metrics, SMAllocation(50, 50), SLOConstraints(ttft_percentile=99))
    low, high = pred.predict(SMAllocation(30, 70), p99), pred.predict(SMAllocation(70, 30), p99)
    assert high.ttft_ms < low.ttft_ms
    assert pred.predict(SMAllocation(50, 50), p50).ttft_ms < pred.predict(SMAllocation(50, 50), p99).ttft_ms
    with pytest.raises(ValueError, match="unknown perf model"):
        create_predictor("profile:gpt-2-on-a-toaster")


@pytest.mark.parametrize("bad", [(math.nan, 1.0, 1.0), (1.0, -2.0, 1.0), (1.0, 1.0, -1.0), (1.0, 2.0), "fast"])
def test_profile_bad_answers_raise_clearly(bad: object) -> None:
    pred = ProfilePredictor(lambda allocation, metrics: bad)
    with pytest.raises(ValueError, match="profile returned"):
        pred.predict(SMAllocation(50, 50), _observation(1.0, 1.0))


@pytest.mark.parametrize("field", ["ttft_ms", "tpot_ms", "throughput"])
def test_prediction_validation(field: str) -> None:
    values = {"ttft_ms": 1.0, "tpot_ms": 1.0, "throughput": 1.0, field: math.inf}
    with pytest.raises(ValueError, match=field):
        Prediction(**values)
