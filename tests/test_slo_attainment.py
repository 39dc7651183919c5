"""SLO attainment: observed in a window, and predicted for a split from the window's shape."""

from __future__ import annotations

import numpy as np
import pytest

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import SLOConstraints
from semipd.slo.attainment import observed_attainment, predicted_attainment
from semipd.slo.observation import Observation

SLO = SLOConstraints(ttft_target_ms=100.0, tpot_target_ms=50.0)


def observe(ttft: np.ndarray, tpot: np.ndarray, streaming: np.ndarray | None = None) -> Observation:
    metrics = AggregatedMetrics(window_end_time=30.0, ttft_samples=ttft, tpot_samples=tpot,
                                streaming_tpot_samples=np.empty(0) if streaming is None else streaming)
    return Observation.from_metrics(metrics, SMAllocation(50, 50), SLO, min_samples=10)


def test_observed_attainment_is_the_product_of_the_shares() -> None:
    obs = observe(np.linspace(10, 200, 20), np.full(20, 40.0))
    got = observed_attainment(obs, SLO)
    assert got.ttft == pytest.approx(np.mean(np.linspace(10, 200, 20) <= 100)) and got.tpot == 1.0
    assert got.both == pytest.approx(got.ttft * got.tpot)
    assert observed_attainment(observe(np.empty(0), np.empty(0)), SLO).both == 1.0  # nothing seen, nothing missed
    assert got.as_dict() == {"ttft": got.ttft, "tpot": got.tpot, "both": got.both}


def test_streaming_tpot_is_read_when_the_window_has_enough_of_it() -> None:
    obs = observe(np.full(20, 50.0), np.full(20, 40.0), streaming=np.full(20, 80.0))  # TPOT climbing now
    assert observed_attainment(obs, SLO).tpot == 0.0


def test_predicted_attainment_moves_the_window_shape_to_the_expected_percentile() -> None:
    samples = np.linspace(50, 150, 101)  # p95 = 145
    obs = observe(samples, np.full(20, 40.0))
    assert predicted_attainment(obs, SLO, 145.0, 40.0).ttft == pytest.approx(np.mean(samples <= 100))
    halved = predicted_attainment(obs, SLO, 72.5, 40.0)  # every request twice as fast
    assert halved.ttft == pytest.approx(np.mean(samples / 2 <= 100)) == 1.0
    assert predicted_attainment(obs, SLO, 145.0, 60.0).both == 0.0  # TPOT 60 ms for every request


def test_without_samples_the_expected_value_decides_and_without_one_nothing_is_missed() -> None:
    obs = observe(np.full(5, 50.0), np.full(5, 40.0))  # below min_samples: no percentile
    assert predicted_attainment(obs, SLO, 90.0, 40.0).both == 1.0
    assert predicted_attainment(obs, SLO, 110.0, 40.0).both == 0.0
    assert predicted_attainment(obs, SLO, None, None).both == 1.0
