"""Snapshots (msgpack round trip) and the prefill/decode join of MetricsAggregator."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from semipd.clock import VirtualClock
from semipd.metrics import MetricsAggregator, RequestMetrics, SemiPDMetricsCollector
from semipd.metrics.aggregator import merge_records


def test_snapshot_round_trip_keeps_every_field() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    m.record_request_arrival("done", 12, timestamp=0.0)
    m.record_prefill_start("done", timestamp=0.1)
    m.record_first_token("done", timestamp=0.2)
    m.record_prefill_end("done", timestamp=0.2)
    m.record_decode_start("done", timestamp=0.25)
    m.record_token("done", timestamp=0.3)
    m.record_request_completion("done", 2, timestamp=0.3)
    m.record_request_arrival("live", 7, timestamp=0.5)
    m.record_request_arrival("gone", 3, timestamp=0.5)
    m.record_request_abort("gone", timestamp=0.6)
    records = {r.request_id: r for r in SemiPDMetricsCollector.records_from_snapshot(m.snapshot())}
    assert set(records) == {"done", "live", "gone"}
    done = records["done"]
    assert (done.arrival_time, done.prefill_start_time, done.first_token_time, done.prefill_end_time,
            done.decode_start_time, done.completion_time) == (0.0, 0.1, 0.2, 0.2, 0.25, 0.3)
    assert (done.input_length, done.output_length, done.success, done.token_times) == (12, 2, True, [0.3])
    assert records["live"].completion_time is None and records["live"].input_length == 7
    assert records["gone"].aborted and not records["gone"].success


def test_decode_snapshot_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        SemiPDMetricsCollector.records_from_snapshot(b"\x00not msgpack at all")
    with pytest.raises(ValueError):
        SemiPDMetricsCollector.records_from_snapshot(msgpack.packb({"version": 99}))


def _prefill_process(clock: VirtualClock, n: int) -> SemiPDMetricsCollector:
    m = SemiPDMetricsCollector(clock=clock)
    for i in range(n):
        rid = f"r{i}"
        m.record_request_arrival(rid, 100 + i, timestamp=float(i))
        m.record_prefill_start(rid, timestamp=i + 0.1)
        m.record_first_token(rid, timestamp=i + 0.3)
        m.record_handoff(rid, timestamp=i + 0.3)
        m.record_prefill_end(rid, timestamp=i + 0.3)  # after the hand-off: still filled in
    return m


def _decode_process(clock: VirtualClock, n: int, finished: int) -> SemiPDMetricsCollector:
    m = SemiPDMetricsCollector(clock=clock)
    for i in range(n):
        rid = f"r{i}"
        m.record_request_arrival(rid, 100 + i, timestamp=i + 0.32)  # arrives at decode after the hand-off
        m.record_decode_start(rid, timestamp=i + 0.32)
        for k in range(1, 5):
            m.record_token(rid, timestamp=i + 0.3 + 0.05 * k)
        if i < finished:
            m.record_request_completion(rid, 5, timestamp=i + 0.5)
    return m


def test_aggregator_joins_prefill_and_decode_sides() -> None:
    clock = VirtualClock()
    prefill = _prefill_process(clock, 6)
    decode = _decode_process(clock, 6, finished=4)
    assert prefill.get_stats()["num_in_flight"] == 0  # handed off, not leaking
    assert prefill.get_request("r0").prefill_end_time == pytest.approx(0.3)
    clock.set(10.0)
    agg_ = MetricsAggregator(window_size_seconds=20.0, clock=clock)
    agg_.update_prefill_metrics(prefill.snapshot())
    agg_.update_decode_metrics(decode.snapshot())
    merged = {r.request_id: r for r in agg_.merged_records()}
    r0 = merged["r0"]
    assert r0.arrival_time == 0.0 and r0.decode_start_time == pytest.approx(0.32)
    assert r0.ttft_ms == pytest.approx(300.0) and r0.tpot_ms == pytest.approx(50.0)
    agg = agg_.get_aggregated_metrics()
    assert agg.num_completed == 4
    assert (agg.num_in_flight, agg.num_waiting_prefill, agg.num_decoding) == (2, 0, 2)
    np.testing.assert_allclose(agg.ttft_samples, [300.0] * 6)  # TTFT from the prefill side
    np.testing.assert_allclose(agg.tpot_samples, [50.0] * 4)  # TPOT needs both sides
    assert agg.itl_mean == pytest.approx(50.0)
    assert agg.queue_time_mean == pytest.approx(100.0)
    assert agg.request_throughput == pytest.approx(4 / 10.0)  # elapsed since the first arrival
    assert agg.request_arrival_rate == pytest.approx(6 / 10.0)
    assert agg.input_token_throughput == pytest.approx(sum(100 + i for i in range(4)) / 10.0)
    # Each side alone cannot give TPOT: the decode process never sees the first token.
    assert decode.get_current_window_metrics().num_tpot_samples == 0


def test_aggregator_accepts_collectors_and_records_and_replaces_a_side() -> None:
    clock = VirtualClock(5.0)
    agg_ = MetricsAggregator(clock=clock)
    m = SemiPDMetricsCollector(clock=clock)
    m.record_request_arrival("a", 1, timestamp=1.0)
    m.record_first_token("a", timestamp=2.0)
    agg_.update_prefill_metrics(m)
    agg_.update_decode_metrics([RequestMetrics("a", arrival_time=2.0, completion_time=3.0, output_length=3,
                                               success=True)])
    agg = agg_.get_aggregated_metrics()
    assert agg.num_completed == 1 and agg.tpot_p50 == pytest.approx(500.0)
    agg_.update_decode_metrics([])
    assert agg_.get_aggregated_metrics().num_in_flight == 1


def test_merge_prefers_each_side_and_falls_back() -> None:
    p = RequestMetrics("x", arrival_time=1.0, first_token_time=2.0, input_length=8, handed_off=True)
    d = RequestMetrics("x", arrival_time=1.5, decode_start_time=2.1, completion_time=4.0, output_length=3,
                       success=True, token_times=[3.0, 4.0])
    m = merge_records(p, d)
    assert (m.arrival_time, m.first_token_time, m.decode_start_time, m.completion_time) == (1.0, 2.0, 2.1, 4.0)
    assert (m.input_length, m.output_length, m.success) == (8, 3, True)
    assert m.itl_ms == pytest.approx([1000.0, 1000.0])
    only_decode = merge_records(None, d)
    assert only_decode.arrival_time == 1.5 and only_decode.first_token_time is None
    aborted_in_prefill = merge_records(RequestMetrics("y", arrival_time=0.0, completion_time=1.0, aborted=True), None)
    assert aborted_in_prefill.aborted and aborted_in_prefill.completion_time == 1.0
    with pytest.raises(ValueError):
        merge_records(None, None)
