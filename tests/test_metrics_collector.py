"""SemiPDMetricsCollector: lifecycle, window statistics, bounds, bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from datetime import datetime

import numpy as np
import pytest

from semipd.allocation import SMAllocation
from semipd.clock import VirtualClock
from semipd.metrics import AggregatedMetrics, RequestMetrics, SemiPDMetricsCollector, SystemMetrics


def _full_request(m: SemiPDMetricsCollector, rid: str, t0: float, *, queue: float = 0.1, prefill: float = 0.2,
                  n_out: int = 5, gap: float = 0.01, input_length: int = 100) -> None:
    m.record_request_arrival(rid, input_length, timestamp=t0)
    m.record_prefill_start(rid, timestamp=t0 + queue)
    ft = t0 + queue + prefill
    m.record_first_token(rid, timestamp=ft)
    m.record_prefill_end(rid, timestamp=ft)
    m.record_decode_start(rid, timestamp=ft)
    for k in range(1, n_out):
        m.record_token(rid, timestamp=ft + k * gap)
    m.record_request_completion(rid, n_out, timestamp=ft + (n_out - 1) * gap)


def test_request_metrics_properties_follow_the_seed() -> None:
    rec = RequestMetrics("r", arrival_time=0.0, prefill_start_time=0.5, first_token_time=1.0, prefill_end_time=1.25,
                         decode_start_time=1.5, completion_time=4.0, input_length=10, output_length=4, success=True,
                         token_times=[2.0, 3.0, 4.0])
    assert rec.ttft_ms == pytest.approx(1000.0)  # arrival at 0.0 counts: None only when unset
    assert rec.tpot_ms == pytest.approx(1000.0)  # (4 - 1) / (4 - 1)
    assert rec.queue_time_ms == pytest.approx(500.0)
    assert rec.prefill_time_ms == pytest.approx(750.0)
    assert rec.decode_time_ms == pytest.approx(2500.0)
    assert rec.e2e_latency_ms == pytest.approx(4000.0)
    assert rec.itl_ms == pytest.approx([1000.0, 1000.0, 1000.0])
    rec.output_length = 1
    assert rec.tpot_ms is None
    assert RequestMetrics("x").ttft_ms is None
    assert not hasattr(rec, "__dict__")  # slotted


def test_lifecycle_window_statistics() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=10.0, clock=clock)
    for i in range(4):
        _full_request(m, f"r{i}", float(i), queue=0.1 * (i + 1), n_out=5, gap=0.02)
    clock.set(10.0)
    agg = m.get_current_window_metrics()
    assert isinstance(agg, AggregatedMetrics)
    assert (agg.window_start_time, agg.window_end_time) == (0.0, 10.0)
    assert agg.num_completed == 4 and agg.num_failed == 0 and agg.num_in_flight == 0
    ttft = np.array([(0.1 * (i + 1) + 0.2) * 1000 for i in range(4)])
    np.testing.assert_allclose(agg.ttft_samples, ttft)
    assert agg.ttft_p95 == pytest.approx(np.percentile(ttft, 95))
    assert agg.tpot_mean == pytest.approx(20.0)
    assert agg.itl_p50 == pytest.approx(20.0)
    assert agg.queue_time_mean == pytest.approx(250.0)
    assert agg.e2e_latency_p50 == pytest.approx(np.percentile([1000 * (0.1 * (i + 1) + 0.28) for i in range(4)], 50))
    assert agg.request_throughput == pytest.approx(0.4)
    assert agg.request_arrival_rate == pytest.approx(0.4)
    assert agg.input_token_throughput == pytest.approx(40.0)
    assert agg.output_token_throughput == pytest.approx(2.0)
    assert agg.total_token_throughput == pytest.approx(42.0)
    assert agg.ttft_percentile(50) == pytest.approx(np.percentile(ttft, 50))
    assert not agg.window_truncated


def test_throughput_uses_elapsed_time_when_shorter_than_window() -> None:
    clock = VirtualClock(100.0)
    m = SemiPDMetricsCollector(window_size_seconds=30.0, clock=clock)
    _full_request(m, "a", 100.0)
    _full_request(m, "b", 101.0)
    clock.set(104.0)
    agg = m.get_current_window_metrics()
    assert agg.request_throughput == pytest.approx(2 / 4.0)
    clock.set(200.0)  # both requests out of the window now
    agg = m.get_current_window_metrics()
    assert agg.num_completed == 0 and agg.request_throughput == 0.0 and agg.ttft_p95 == 0.0


def test_ttft_reacts_before_completion_and_in_flight_counts() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=5.0, clock=clock)
    m.record_request_arrival("slow", 10, timestamp=0.0)
    m.record_first_token("slow", timestamp=3.0)
    m.record_request_arrival("queued", 10, timestamp=1.0)
    clock.set(4.0)
    agg = m.get_current_window_metrics()
    assert agg.num_completed == 0
    assert agg.ttft_samples.tolist() == [3000.0]
    assert agg.ttft_p99 == pytest.approx(3000.0)
    assert (agg.num_in_flight, agg.num_waiting_prefill, agg.num_decoding) == (2, 1, 1)
    assert agg.num_tpot_samples == 0


def test_streaming_tpot_leads_tpot() -> None:
    """A decode step slowing down shows in streaming TPOT (tokens streamed in the window) while the
    requests are still decoding; TPOT proper waits for their completion and averages their lives."""
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=10.0, clock=clock)
    rids = [f"r{i}" for i in range(20)]
    for rid in rids:
        m.record_request_arrival(rid, 100, timestamp=0.0)
        m.record_first_token(rid, timestamp=0.1)
    t = 0.1
    for k in range(400):  # 100 steps of 10 ms, then 300 of 40 ms
        t += 0.01 if k < 100 else 0.04
        m.record_decode_step(rids, timestamp=t)
    clock.set(t)
    agg = m.get_current_window_metrics()
    assert agg.num_tpot_samples == 0 and agg.num_in_flight == 20
    # The window [t - 10, t] holds only 40 ms steps.
    assert agg.num_streaming_tpot_samples == 20 and agg.streaming_tpot_percentile(95) == pytest.approx(40.0)
    assert agg.itl_p50 == pytest.approx(40.0)
    recent = m.get_current_window_metrics(since=t - 1.0)
    assert recent.window_start_time == pytest.approx(t - 1.0)
    assert recent.streaming_tpot_percentile(50) == pytest.approx(40.0)
    for rid in rids:
        m.record_request_completion(rid, 401, timestamp=t)
    done = m.get_current_window_metrics()
    assert done.tpot_percentile(95) == pytest.approx((t - 0.1) / 400 * 1000)  # 32.5 ms: the whole life


def test_decode_steps_in_bulk() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=10.0, clock=clock)
    for rid, arrival in (("a", 0.0), ("b", 0.0), ("late", 0.5)):
        m.record_request_arrival(rid, 50 if rid == "late" else 150, timestamp=arrival)
    m.record_first_token("a", timestamp=1.0)
    m.record_first_token("b", timestamp=1.5)
    m.record_decode_step(["a", "b", "late", "ghost"], timestamp=2.0)  # late: no first token yet
    m.record_decode_step(["a", "b"], timestamp=2.5)
    m.record_decode_step(["a"], timestamp=2.25)  # before a's previous token
    stats = m.get_stats()
    assert stats["unknown_request_events"] == 1 and stats["out_of_order_events"] == 1
    rec = m.get_request("a")
    assert rec.last_token_time == 2.5 and rec.token_times is None and rec.itl_ms == []  # no per-token times
    assert m.get_request("late").last_token_time == 2.0
    clock.set(3.0)
    agg = m.get_current_window_metrics()
    assert agg.itl_mean == pytest.approx((1000 + 500 + 500 + 500) / 4)  # a: 1.0 -> 2.0 -> 2.5, b: 1.5 -> 2.0 -> 2.5
    assert sorted(agg.streaming_tpot_samples.tolist()) == pytest.approx([500.0, 750.0])
    assert agg.arrival_input_token_rate == pytest.approx(350 / 3.0)


def test_failed_and_aborted_are_counted_apart() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    for rid in ("ok", "bad", "gone"):
        m.record_request_arrival(rid, 10, timestamp=0.0)
        m.record_first_token(rid, timestamp=0.5)
    m.record_request_completion("ok", 3, timestamp=1.0)
    m.record_request_completion("bad", 3, success=False, timestamp=1.0)
    m.record_request_abort("gone", timestamp=1.0)
    clock.set(2.0)
    agg = m.get_current_window_metrics()
    assert (agg.num_completed, agg.num_failed, agg.num_aborted) == (1, 1, 1)
    assert agg.num_tpot_samples == 1 and agg.tpot_mean == pytest.approx(250.0)
    assert agg.num_ttft_samples == 3
    assert m.get_request("gone").aborted and not m.get_request("bad").success


def test_unknown_and_out_of_order_events_never_raise() -> None:
    clock = VirtualClock(10.0)
    m = SemiPDMetricsCollector(clock=clock)
    m.record_prefill_start("ghost")
    m.record_token("ghost")
    m.record_request_completion("ghost", 3)
    assert m.get_stats()["unknown_request_events"] == 3
    m.record_request_arrival("r", 5, timestamp=5.0)
    m.record_request_arrival("r", 5, timestamp=5.0)  # duplicate arrival
    m.record_first_token("r", timestamp=4.0)  # before arrival: ignored
    m.record_first_token("r", timestamp=6.0)
    m.record_first_token("r", timestamp=6.5)  # second first token: ignored
    m.record_request_completion("r", 2, timestamp=7.0)
    m.record_request_completion("r", 2, timestamp=8.0)  # completion twice
    m.record_token("r", timestamp=8.0)  # after completion
    stats = m.get_stats()
    assert stats["unknown_request_events"] == 3
    assert stats["out_of_order_events"] == 5
    rec = m.get_request("r")
    assert rec.first_token_time == 6.0 and rec.completion_time == 7.0


def test_completion_before_recorded_events_is_clamped_and_ends_the_request() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    m.record_request_arrival("r", 5, timestamp=1.0)
    m.record_first_token("r", timestamp=2.0)
    m.record_request_completion("r", 3, timestamp=1.5)
    assert m.get_stats()["out_of_order_events"] == 1
    assert m.get_stats()["num_in_flight"] == 0
    assert m.get_request("r").completion_time == 2.0


def test_repeated_phase_events_keep_the_first_time() -> None:
    m = SemiPDMetricsCollector(clock=VirtualClock())
    m.record_request_arrival("r", 5, timestamp=0.0)
    m.record_prefill_start("r", timestamp=1.0)
    m.record_prefill_start("r", timestamp=2.0)  # a preempted request is prefilled again
    assert m.get_request("r").prefill_start_time == 1.0
    assert m.get_stats()["repeated_events"] == 1
    assert m.get_stats()["out_of_order_events"] == 0


def test_history_is_bounded_and_evictions_counted() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=1000.0, max_history_size=10, clock=clock)
    for i in range(25):
        _full_request(m, f"r{i}", float(i))
    clock.set(30.0)
    stats = m.get_stats()
    assert stats["history_size"] == 10 and stats["num_evicted"] == 15 and stats["num_completed_total"] == 25
    assert m.get_request("r0") is None and m.get_request("r24") is not None
    agg = m.get_current_window_metrics()
    assert agg.num_completed == 10 and agg.window_truncated
    # Once the evicted events are older than the window, the window is complete again.
    m2 = SemiPDMetricsCollector(window_size_seconds=5.0, max_history_size=10, clock=clock)
    for i in range(25):
        _full_request(m2, f"r{i}", float(i))
    assert not m2.get_current_window_metrics().window_truncated


def test_in_flight_is_bounded() -> None:
    m = SemiPDMetricsCollector(clock=VirtualClock(), max_in_flight=3)
    for i in range(5):
        m.record_request_arrival(f"r{i}", 1, timestamp=float(i))
    m.record_first_token("r4", timestamp=5.0)
    stats = m.get_stats()
    assert stats["num_in_flight"] == 3 and stats["num_evicted_in_flight"] == 2
    agg = m.get_current_window_metrics()
    assert (agg.num_waiting_prefill, agg.num_decoding) == (2, 1)
    m.record_first_token("r0", timestamp=6.0)  # evicted: unknown now
    assert m.get_stats()["unknown_request_events"] == 1


def test_system_metrics_and_real_time_dict() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    assert m.get_real_time_metrics()["kv_cache_usage"] is None
    snap = m.record_system_metrics(num_running_requests=3, num_waiting_requests=2, kv_cache_usage=0.5,
                                   sm_allocation=SMAllocation(60, 40))
    assert isinstance(snap, SystemMetrics) and m.get_system_metrics() == snap
    _full_request(m, "r", 0.0)
    clock.set(1.0)
    rt = m.get_real_time_metrics()
    for key in ("ttft_p95_ms", "tpot_p95_ms", "request_throughput", "itl_p99_ms", "e2e_latency_p95_ms",
                "queue_time_mean_ms", "num_in_flight", "request_arrival_rate", "total_token_throughput"):
        assert key in rt
    assert rt["ttft_p95_ms"] == pytest.approx(300.0)
    assert (rt["num_running_requests"], rt["prefill_sm_percentage"], rt["decode_sm_percentage"]) == (3, 60, 40)
    with pytest.raises(ValueError, match="kv_cache_usage"):
        m.record_system_metrics(kv_cache_usage=1.5)


@pytest.mark.parametrize("kwargs", [{"window_size_seconds": 0}, {"max_history_size": 0}, {"max_in_flight": -1},
                                    {"max_itl_samples": 1.5}])
def test_constructor_validates(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        SemiPDMetricsCollector(**kwargs)


def test_completion_listener_sees_every_ended_request() -> None:
    m = SemiPDMetricsCollector(clock=VirtualClock())
    seen: list[str] = []
    m.add_completion_listener(lambda rec: seen.append(rec.request_id))
    m.add_completion_listener(lambda rec: 1 / 0)  # a failing listener is logged, not raised
    _full_request(m, "a", 0.0)
    m.record_request_arrival("b", 1, timestamp=0.0)
    m.record_request_abort("b", timestamp=1.0)
    assert seen == ["a", "b"]


def test_azure_trace_replay_matches_direct_counts(azure_trace) -> None:
    """Replay the Azure conversation trace with a synthetic service time; the window's rates and
    counts equal those computed directly from the trace."""
    with open(azure_trace, newline="") as f:
        rows = list(csv.DictReader(f))
    t0 = datetime.fromisoformat(rows[0]["TIMESTAMP"])
    reqs = []
    for i, row in enumerate(rows):
        arrival = (datetime.fromisoformat(row["TIMESTAMP"]) - t0).total_seconds()
        n_in, n_out = int(row["ContextTokens"]), max(1, int(row["GeneratedTokens"]))
        first = arrival + 0.05 + 1e-5 * n_in
        reqs.append((f"az{i}", arrival, first, first + 0.02 * (n_out - 1), n_in, n_out))
    now, window = 1800.0, 60.0
    events = []
    for rid, a, ft, done, n_in, n_out in reqs:
        events += [(a, 0, rid, n_in), (ft, 1, rid, 0), (done, 2, rid, n_out)]
    events.sort()
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=window, max_history_size=len(reqs), clock=clock)
    for t, kind, rid, n in events:
        if t > now:
            break
        if kind == 0:
            m.record_request_arrival(rid, n, timestamp=t)
        elif kind == 1:
            m.record_first_token(rid, timestamp=t)
        else:
            m.record_request_completion(rid, n, timestamp=t)
    clock.set(now)
    agg = m.get_current_window_metrics()
    start = now - window
    inw = [r for r in reqs if start <= r[3] <= now]
    assert agg.num_completed == len(inw) > 100
    assert agg.request_throughput == pytest.approx(len(inw) / window)
    assert agg.request_arrival_rate == pytest.approx(sum(start <= r[1] <= now for r in reqs) / window)
    assert agg.output_token_throughput == pytest.approx(sum(r[5] for r in inw) / window)
    ttft = [(r[2] - r[1]) * 1000 for r in reqs if start <= r[2] <= now]
    assert agg.ttft_p99 == pytest.approx(np.percentile(ttft, 99))
    assert agg.num_in_flight == sum(r[1] <= now < r[3] for r in reqs)
    assert agg.num_waiting_prefill == sum(r[1] <= now < r[2] for r in reqs)


def test_metrics_package_does_not_import_torch() -> None:
    code = "import sys, semipd.metrics; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
