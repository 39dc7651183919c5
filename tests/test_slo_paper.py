"""The paper predictor: online fit of TTFT = a1/(x - lambda) + b1 and TPOT = a2/y + b2."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import Observation, PaperPredictor, SLOConstraints
from semipd.slo.paper import fit_nonnegative


def ttft_true(x: float, rate: float) -> float:
    return 2000.0 / (x - 2.0 * rate) + 30.0  # lambda = 2 percent per req/s


def tpot_true(y: float) -> float:
    return 1500.0 / y + 5.0


def obs(x: float, ttft: float, tpot: float, rate: float = 10.0, time: float = 0.0) -> Observation:
    metrics = AggregatedMetrics(window_end_time=time, request_arrival_rate=rate, request_throughput=rate,
                                ttft_samples=np.full(20, ttft) if ttft > 0 else np.empty(0),
                                tpot_samples=np.full(20, tpot) if tpot > 0 else np.empty(0))
    return Observation.from_metrics(metrics, SMAllocation(x, 100 - x), SLOConstraints())


def trained(xs: list[float], rate: float = 10.0, **kwargs: object) -> PaperPredictor:
    pred = PaperPredictor(**kwargs)  # type: ignore[arg-type]
    for x in xs:
        pred.observe(obs(x, ttft_true(x, rate), tpot_true(100 - x), rate))
    return pred


def test_fit_nonnegative_recovers_exact_line() -> None:
    u = np.array([0.01, 0.02, 0.04])
    a, b, err = fit_nonnegative(u, 300.0 * u + 7.0)
    assert (a[0], b[0]) == pytest.approx((300.0, 7.0)) and err[0] < 1e-9


def test_fit_nonnegative_clamps_to_nonnegative() -> None:
    u = np.array([0.01, 0.02, 0.04])
    y = 50.0 - 100.0 * u  # the unconstrained slope is negative
    a, b, err = fit_nonnegative(u, y)
    assert a[0] == 0.0 and b[0] > 0
    # Rows are independent fits: the batch answers as each row alone would.
    rows = np.stack([u, 2 * u, u ** 2])
    a, b, err = fit_nonnegative(rows, y)
    for i, row in enumerate(rows):
        single = fit_nonnegative(row, y)
        assert (a[i], b[i], err[i]) == pytest.approx(tuple(v[0] for v in single))


def test_fits_the_curves_and_predicts_unseen_splits() -> None:
    pred = trained([30, 40, 50, 60, 70])
    desc = pred.describe()
    assert desc["ttft_fit"] is not None and desc["tpot_fit"] is not None and desc["lambda_per_rate"]
    assert desc["tpot_fit"]["a"] == pytest.approx(1500.0, rel=1e-6)
    assert desc["tpot_fit"]["b"] == pytest.approx(5.0, rel=1e-6)
    assert desc["ttft_fit"]["c"] == pytest.approx(2.0, rel=0.05)
    current = obs(50, ttft_true(50, 10), tpot_true(50))
    for x in (25, 35, 45, 55, 65, 75):
        p = pred.predict(SMAllocation(x, 100 - x), current)
        assert p.ttft_ms == pytest.approx(ttft_true(x, 10), rel=0.03)
        assert p.tpot_ms == pytest.approx(tpot_true(100 - x), rel=1e-6)


def test_lambda_follows_the_arrival_rate() -> None:
    pred = PaperPredictor()
    for x, rate in [(30, 6.0), (40, 8.0), (50, 10.0), (60, 7.0), (70, 9.0)]:
        pred.observe(obs(x, ttft_true(x, rate), tpot_true(100 - x), rate))
    # At 13 req/s the pole moves to x = 26: TTFT at x = 30 is far worse than anything seen at x = 30.
    current = obs(40, 0.0, tpot_true(60), rate=13.0)  # no TTFT reading: the fit itself is used
    p = pred.predict(SMAllocation(30, 70), current)
    assert p.ttft_ms == pytest.approx(ttft_true(30, 13.0), rel=0.1)
    assert p.ttft_ms > 2 * ttft_true(30, 6.0)


def test_fewer_than_three_splits_scale_from_current() -> None:
    pred = trained([40, 60])
    assert pred.describe()["ttft_fit"] is None and pred.describe()["tpot_fit"] is None
    current = obs(60, 90.0, 40.0)
    p = pred.predict(SMAllocation(40, 60), current)
    assert p.ttft_ms == pytest.approx(90.0 * 60 / 40)
    assert p.tpot_ms == pytest.approx(40.0 * 40 / 60)


def test_anchored_to_the_current_window() -> None:
    pred = trained([30, 40, 50, 60, 70])
    x0 = 50
    current = obs(x0, 1.3 * ttft_true(x0, 10), 0.8 * tpot_true(100 - x0))
    here = pred.predict(SMAllocation(x0, 100 - x0), current)
    assert (here.ttft_ms, here.tpot_ms) == pytest.approx((1.3 * ttft_true(x0, 10), 0.8 * tpot_true(50)), rel=1e-9)
    there = pred.predict(SMAllocation(70, 30), current)
    assert there.ttft_ms == pytest.approx(1.3 * ttft_true(70, 10), rel=0.03)
    assert there.tpot_ms == pytest.approx(0.8 * tpot_true(30), rel=1e-6)


def test_below_the_pole_is_finite_positive_and_saturates_throughput() -> None:
    pred = trained([30, 40, 50, 60, 70])
    current = obs(50, ttft_true(50, 10), tpot_true(50))
    p = pred.predict(SMAllocation(15, 85), current)  # pole at x = 20
    assert math.isfinite(p.ttft_ms) and p.ttft_ms > 10 * ttft_true(50, 10)
    assert p.throughput == pytest.approx(10.0 * 15 / 20, rel=0.05)
    assert pred.predict(SMAllocation(60, 40), current).throughput == pytest.approx(10.0)


def test_history_keeps_the_latest_splits() -> None:
    pred = trained([25, 30, 40, 50, 60, 70], history_size=4)
    assert pred.describe()["ttft_points"] == 4
    pred.observe(obs(70, 55.0, 30.0))  # a newer window at a known split replaces the older one
    assert pred.describe()["ttft_points"] == 4


def test_a_reading_far_off_the_fit_falls_back() -> None:
    pred = trained([30, 40, 50, 60, 70])
    current = obs(50, 3 * ttft_true(50, 10), tpot_true(50))  # another request mix: 3x the fitted TTFT
    p = pred.predict(SMAllocation(60, 40), current)
    assert p.ttft_ms == pytest.approx(3 * ttft_true(50, 10) * 50 / 60)  # scaled from the reading
    assert p.tpot_ms == pytest.approx(tpot_true(40), rel=1e-6)  # TPOT still fits
    assert pred.describe()["ttft_fit"] is not None  # kept for when readings agree again


def test_old_observations_age_out() -> None:
    pred = PaperPredictor(max_age_seconds=100.0)
    for i, x in enumerate((30, 40, 50)):
        pred.observe(obs(x, ttft_true(x, 10), tpot_true(100 - x), time=10.0 * i))
    assert pred.describe()["ttft_fit"] is not None
    pred.observe(obs(60, ttft_true(60, 10), tpot_true(40), time=115.0))  # drops t=0 and t=10
    assert pred.describe()["ttft_points"] == 2 and pred.describe()["ttft_fit"] is None


def test_flat_history_falls_back() -> None:
    pred = PaperPredictor()
    for x in (30, 50, 70):
        pred.observe(obs(x, 80.0, 20.0))  # no dependence on SMs: the model says nothing
    assert pred.describe()["ttft_fit"] is None
    p = pred.predict(SMAllocation(35, 65), obs(70, 120.0, 20.0))
    assert p.ttft_ms == pytest.approx(120.0 * 70 / 35)


@pytest.mark.parametrize(("kwargs", "field"), [({"history_size": 2}, "history_size"),
                                                ({"min_distinct": 1}, "min_distinct"),
                                                ({"max_fit_error": 0}, "max_fit_error"),
                                                ({"max_age_seconds": -1}, "max_age_seconds"),
                                                ({"max_anchor_ratio": 1.0}, "max_anchor_ratio")])
def test_validation(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        PaperPredictor(**kwargs)  # type: ignore[arg-type]


_split = st.floats(min_value=5.0, max_value=95.0)
_latency = st.floats(min_value=0.01, max_value=1e5)


@settings(max_examples=150, deadline=None)
@given(history=st.lists(st.tuples(_split, _latency, _latency, st.floats(0.0, 100.0)), min_size=0, max_size=10),
       current=st.tuples(_split, st.one_of(st.just(0.0), _latency), st.one_of(st.just(0.0), _latency),
                         st.floats(0.0, 100.0)),
       candidate=_split)
def test_predictions_always_finite_and_positive(history: list[tuple[float, float, float, float]],
                                                current: tuple[float, float, float, float], candidate: float) -> None:
    pred = PaperPredictor()
    for x, ttft, tpot, rate in history:
        pred.observe(obs(x, ttft, tpot, rate))
    p = pred.predict(SMAllocation(candidate, 100 - candidate), obs(*current))
    assert math.isfinite(p.ttft_ms) and p.ttft_ms > 0
    assert math.isfinite(p.tpot_ms) and p.tpot_ms > 0
    assert math.isfinite(p.throughput) and p.throughput >= 0
