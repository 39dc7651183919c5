"""SteadyStateModel: the profile predictor's forecast of a split under a window's load."""

from __future__ import annotations

import pytest

from semipd.allocation import SMGrid
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.perf import SteadyStateModel, get_perf_model
from semipd.perf.forecast import OVERLOAD
from semipd.slo import PerformanceProfile, create_predictor

PERF = get_perf_model("llama-3.1-8b-h100")
GRID = SMGrid(132, 8, 8)
SPLITS = [GRID.allocation(p) for p in range(32, 105, 8)]


def window(rate: float, mean_in: float, mean_out: float, arriving_in: float | None = None) -> AggregatedMetrics:
    """A steady load (`arriving_in`: the mean prompt of the arrivals, when it differs from the completions')."""
    return AggregatedMetrics(window_start_time=0.0, window_end_time=30.0, request_arrival_rate=rate,
                             arrival_input_token_rate=rate * (mean_in if arriving_in is None else arriving_in),
                             request_throughput=rate, input_token_throughput=rate * mean_in,
                             output_token_throughput=rate * mean_out)


def test_is_a_performance_profile_usable_by_the_profile_predictor():
    profile = SteadyStateModel(PERF)
    assert isinstance(profile, PerformanceProfile)
    assert create_predictor("profile", profile=profile).name == "profile"


def test_more_sms_for_a_phase_means_lower_latency_for_it():
    profile = SteadyStateModel(PERF, decode_borrows_idle_prefill=False)
    preds = [profile.predict(a, window(8.0, 500, 300)) for a in SPLITS]  # light prefill: little interference
    ttfts = [p[0] for p in preds]
    tpots = [p[1] for p in preds]
    assert ttfts == sorted(ttfts, reverse=True)  # prefill share grows along SPLITS
    # Decode gains little past ~64 SMs (and a prefill on fewer SMs is busier, so interferes longer),
    # but starves below that.
    assert tpots[-1] == max(tpots) and tpots[-1] > 1.2 * min(tpots)
    assert tpots[4:] == sorted(tpots[4:])
    assert all(p[2] == pytest.approx(8.0) for p in preds)  # every split carries the load


def test_decode_borrowing_prefills_idle_sms_makes_tpot_follow_the_whole_gpu_under_light_prefill():
    """While prefill idles, decode steps run on the whole GPU (as the engine's do): under a light prefill
    load decode's own share matters little, and TPOT is at most what it is without borrowing."""
    borrowing, own = SteadyStateModel(PERF), SteadyStateModel(PERF, decode_borrows_idle_prefill=False)
    load = window(8.0, 500, 300)
    with_borrow = [borrowing.predict(a, load)[1] for a in SPLITS]
    without = [own.predict(a, load)[1] for a in SPLITS]
    assert all(b <= o + 1e-9 for b, o in zip(with_borrow, without, strict=True))
    assert max(with_borrow) < 1.05 * min(with_borrow) and max(without) > 1.2 * min(without)


def test_the_ttft_percentile_sets_the_tail():
    profile = SteadyStateModel(PERF)
    alloc, load = GRID.allocation(64), window(4.0, 3000, 40)
    assert profile.predict(alloc, load, ttft_percentile=50)[0] < profile.predict(alloc, load, ttft_percentile=99)[0]
    with pytest.raises(ValueError, match="ttft_percentile"):
        profile.predict(alloc, load, ttft_percentile=0)


def test_overload_is_reported_as_a_large_finite_latency_and_a_capped_throughput():
    profile = SteadyStateModel(PERF)
    ttft, _, thr = profile.predict(GRID.allocation(32), window(10.0, 4000, 20))  # ~40k prompt tokens/s
    ttft_ok, _, thr_ok = profile.predict(GRID.allocation(104), window(4.0, 4000, 20))
    assert ttft >= OVERLOAD * 100 and thr < 10.0
    assert ttft_ok < 1000 and thr_ok == pytest.approx(4.0)
    _, tpot, thr = profile.predict(GRID.allocation(104), window(40.0, 300, 1000))
    assert tpot > 100 and thr < 40.0


def test_lengths_come_from_the_window_and_persist_without_completions():
    profile = SteadyStateModel(PERF)
    alloc = GRID.allocation(64)
    short = profile.predict(alloc, window(8.0, 200, 300))
    long_ = profile.predict(alloc, window(8.0, 3000, 300))
    assert long_[0] > short[0]
    idle = AggregatedMetrics(window_end_time=30.0, request_arrival_rate=8.0)  # nothing completed
    assert profile.predict(alloc, idle) == long_


def test_prompt_lengths_follow_the_arrivals_at_once_and_decode_keeps_the_completed_pairs():
    """After a shift to short prompts the completions still carry the long ones; prefill follows the
    arrivals at once, decode the completed requests' (prompt, output) pairs until new ones complete."""
    profile = SteadyStateModel(PERF)
    alloc = GRID.allocation(64)
    shifted = profile.predict(alloc, window(16.0, 3000, 40, arriving_in=300))
    fresh = SteadyStateModel(PERF).predict(alloc, window(16.0, 300, 40))
    assert shifted[0] == pytest.approx(fresh[0])  # TTFT: the new prompts
    assert shifted[1] > fresh[1]  # TPOT: the decode batch still holds the long prompts' context
    assert shifted[0] < 1000 and shifted[0] < profile.predict(alloc, window(16.0, 3000, 40))[0] / 10
