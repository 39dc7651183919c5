"""Workloads: Azure trace parsing, arrival processes, length distributions, phases."""

from __future__ import annotations

import numpy as np
import pytest

from semipd.workload import (
    LengthDist,
    Phase,
    WorkloadRequest,
    concatenate_phases,
    describe_workload,
    gamma_arrivals,
    load_azure_trace,
    phased_workload,
    poisson_arrivals,
    prefill_heavy_then_decode_heavy,
    synthetic_workload,
)

TINY_TRACE = """TIMESTAMP,ContextTokens,GeneratedTokens
2023-11-16 18:15:46.6805900,374,44
2023-11-16 18:15:50.9951690,396,0
2023-11-16 18:15:51.2224670,8879,55
2023-11-16 18:16:00.0000000,91,2000
"""


@pytest.fixture
def tiny_trace(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text(TINY_TRACE)
    return path


def test_request_validation():
    with pytest.raises(ValueError, match="input_len"):
        WorkloadRequest(0.0, 0, 5)
    with pytest.raises(ValueError, match="output_len"):
        WorkloadRequest(0.0, 5, 0)
    with pytest.raises(ValueError, match="arrival_time"):
        WorkloadRequest(-1.0, 5, 5)


def test_tiny_trace_timestamps_with_seven_fraction_digits(tiny_trace):
    reqs = load_azure_trace(tiny_trace)
    assert [r.arrival_time for r in reqs] == pytest.approx([0.0, 4.314579, 4.541877, 13.31941])
    assert [r.input_len for r in reqs] == [374, 396, 8879, 91]
    assert reqs[1].output_len == 1  # zero generated tokens become one


def test_tiny_trace_options(tiny_trace):
    reqs = load_azure_trace(tiny_trace, time_scale=0.5, max_input_len=7000, max_output_len=1024)
    assert reqs[3].arrival_time == pytest.approx(13.31941 / 2)
    assert max(r.input_len for r in reqs) == 7000
    assert max(r.output_len for r in reqs) == 1024
    late = load_azure_trace(tiny_trace, start_offset_s=4.4)
    assert [r.input_len for r in late] == [8879, 91]
    assert late[0].arrival_time == pytest.approx(4.541877 - 4.4)
    assert len(load_azure_trace(tiny_trace, max_requests=2)) == 2


def test_trace_argument_errors(tiny_trace, tmp_path):
    with pytest.raises(ValueError, match="time_scale"):
        load_azure_trace(tiny_trace, time_scale=0)
    with pytest.raises(ValueError, match="max_requests"):
        load_azure_trace(tiny_trace, max_requests=0)
    with pytest.raises(ValueError, match="start_offset_s"):
        load_azure_trace(tiny_trace, start_offset_s=-1)
    with pytest.raises(ValueError, match="trace file not found"):
        load_azure_trace(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="not an Azure LLM trace"):
        load_azure_trace(bad)


def test_azure_trace(azure_trace):
    reqs = load_azure_trace(azure_trace)
    assert len(reqs) == 19366
    arrivals = np.array([r.arrival_time for r in reqs])
    assert arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert 3400 < arrivals[-1] < 3600
    stats = describe_workload(reqs)
    assert stats["mean_input_len"] == pytest.approx(1155, abs=1)
    assert stats["mean_output_len"] == pytest.approx(211, abs=1)
    fast = load_azure_trace(azure_trace, time_scale=0.5, max_requests=100)
    assert len(fast) == 100
    assert fast[-1].arrival_time == pytest.approx(reqs[99].arrival_time / 2)


def test_gamma_rate_and_burstiness():
    rng = np.random.default_rng(1)
    times = gamma_arrivals(10.0, 0.25, rng, num_requests=20000)
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    gaps = np.diff(times)
    assert 1 / gaps.mean() == pytest.approx(10.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.1)  # CV = 1/sqrt(burstiness)
    regular = np.diff(gamma_arrivals(10.0, 4.0, np.random.default_rng(1), num_requests=20000))
    assert regular.std() / regular.mean() == pytest.approx(0.5, rel=0.1)


def test_poisson_is_gamma_with_burstiness_one():
    a = poisson_arrivals(5.0, np.random.default_rng(3), num_requests=50)
    b = gamma_arrivals(5.0, 1.0, np.random.default_rng(3), num_requests=50)
    np.testing.assert_array_equal(a, b)


def test_duration_bound():
    times = poisson_arrivals(100.0, np.random.default_rng(0), duration=120.0)
    assert times.max() < 120.0
    assert times.size == pytest.approx(12000, rel=0.05)
    both = poisson_arrivals(100.0, np.random.default_rng(0), num_requests=50, duration=0.1)
    assert both.size < 50 and both.max() < 0.1
    assert np.all(gamma_arrivals(float("inf"), 1.0, np.random.default_rng(0), num_requests=7) == 0)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"rate": 0.0, "num_requests": 5}, "rate"),
        ({"rate": 1.0}, "num_requests or duration"),
        ({"rate": 1.0, "num_requests": -1}, "num_requests"),
        ({"rate": 1.0, "duration": 0.0}, "duration"),
        ({"rate": 1.0, "num_requests": 5, "burstiness": 0.0}, "burstiness"),
    ],
)
def test_arrival_errors(kwargs, field):
    burstiness = kwargs.pop("burstiness", 1.0)
    with pytest.raises(ValueError, match=field):
        gamma_arrivals(burstiness=burstiness, rng=np.random.default_rng(0), **kwargs)


def test_length_distributions():
    rng = np.random.default_rng(0)
    assert np.all(LengthDist.fixed(7).sample(rng, 10) == 7)
    u = LengthDist.uniform(3, 5).sample(rng, 1000)
    assert set(u.tolist()) == {3, 4, 5}
    ln = LengthDist.lognormal(mean=1155, median=1020, hi=7000).sample(rng, 200_000)
    assert ln.max() <= 7000 and ln.min() >= 1
    assert np.median(ln) == pytest.approx(1020, rel=0.03)
    assert ln.mean() == pytest.approx(1155, rel=0.05)
    emp = LengthDist.empirical([10, 20, 30]).sample(rng, 100)
    assert set(emp.tolist()) <= {10, 20, 30}
    assert LengthDist.sample(LengthDist.fixed(1), rng, 0).size == 0


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: LengthDist.fixed(0), "n"),
        (lambda: LengthDist.uniform(5, 3), "hi"),
        (lambda: LengthDist.uniform(0, 3), "lo"),
        (lambda: LengthDist.lognormal(mean=10, median=20), "mean"),
        (lambda: LengthDist.lognormal(mean=10, median=0), "median"),
        (lambda: LengthDist.empirical([]), "samples"),
        (lambda: LengthDist.empirical([0, 3]), "samples"),
    ],
)
def test_length_errors(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_synthetic_workload_deterministic():
    kwargs = {"num_requests": 200, "input_len": LengthDist.uniform(10, 100), "output_len": 32}
    a = synthetic_workload(4.0, seed=5, **kwargs)
    b = synthetic_workload(4.0, seed=5, **kwargs)
    c = synthetic_workload(4.0, seed=6, **kwargs)
    assert a == b and a != c
    assert len(a) == 200 and all(r.output_len == 32 for r in a)
    assert all(10 <= r.input_len <= 100 for r in a)
    with pytest.raises(ValueError, match="input_len"):
        synthetic_workload(1.0, num_requests=3, input_len=0)


def test_phased_workload():
    phases = [Phase(20.0, 5.0, 2048, 16), Phase(30.0, 10.0, 128, LengthDist.uniform(200, 300))]
    reqs = phased_workload(phases, seed=1)
    assert reqs == phased_workload(phases, seed=1)
    first = [r for r in reqs if r.arrival_time < 20.0]
    second = [r for r in reqs if r.arrival_time >= 20.0]
    assert all(r.input_len == 2048 and r.output_len == 16 for r in first)
    assert all(r.input_len == 128 and 200 <= r.output_len <= 300 for r in second)
    assert len(first) == pytest.approx(100, rel=0.35) and len(second) == pytest.approx(300, rel=0.25)
    assert max(r.arrival_time for r in reqs) < 50.0
    with pytest.raises(ValueError, match="phases"):
        phased_workload([])
    with pytest.raises(ValueError, match="duration"):
        Phase(0.0, 1.0, 1, 1)


def test_describe_empty_and_small():
    assert describe_workload([])["num_requests"] == 0
    stats = describe_workload([WorkloadRequest(0.0, 10, 2), WorkloadRequest(2.0, 30, 4)])
    assert stats["request_rate"] == pytest.approx(0.5)
    assert stats["total_output_tokens"] == 6


def test_builtin_phased_workload():
    reqs = prefill_heavy_then_decode_heavy(100.0, seed=2)
    first = describe_workload([r for r in reqs if r.arrival_time < 50.0])
    second = describe_workload([r for r in reqs if r.arrival_time >= 50.0])
    assert first["mean_input_len"] > 5 * second["mean_input_len"]
    assert second["mean_output_len"] > 5 * first["mean_output_len"]
    assert reqs == prefill_heavy_then_decode_heavy(100.0, seed=2)
    with pytest.raises(ValueError, match="duration"):
        prefill_heavy_then_decode_heavy(0.0)


def test_concatenate_phases_clips_and_offsets():
    a = [WorkloadRequest(t, 1000, 10) for t in (0.0, 3.0, 9.9, 12.0)]
    b = [WorkloadRequest(t, 100, 500) for t in (1.0, 5.0)]
    got = concatenate_phases([a, b], 10.0)
    assert [(r.arrival_time, r.input_len) for r in got] == [(0.0, 1000), (3.0, 1000), (9.9, 1000), (11.0, 100),
                                                             (15.0, 100)]
    with pytest.raises(ValueError, match="phase_seconds"):
        concatenate_phases([a], 0.0)
    with pytest.raises(ValueError, match="phases"):
        concatenate_phases([], 10.0)

