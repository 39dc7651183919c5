"""Throughput by arrival window and the keep-pace test, on hand-made records."""

from __future__ import annotations

import pytest

from semipd.bench.pace import PACE_THRESHOLD, window_stats
from semipd.bench.records import RequestRecord
from semipd.bench.stats import summarize
from semipd.bench.sweep import SweepPoint, find_capacity


def rec(i: int, send: float, latency: float | None, out: int = 10) -> RequestRecord:
    return RequestRecord(index=i, scheduled_time=send, send_time=send, input_tokens=5, requested_output_tokens=out,
                         output_tokens=out if latency is not None else 0, ttft=0.01 if latency else None,
                         latency=latency, error="" if latency is not None else "boom")


def steady(rate: float, window: float, latency: float) -> list[RequestRecord]:
    n = int(rate * window)
    return [rec(i, i / rate, latency) for i in range(n)]


def test_a_server_that_keeps_up_has_window_throughput_at_the_rate() -> None:
    w = window_stats(steady(10, 20, 0.5), 20.0)
    assert w is not None and w.keeps_pace
    assert w.window_request_throughput == pytest.approx(10.0)
    assert w.late_completion_ratio == pytest.approx(1.0, abs=0.05)
    assert w.window_output_throughput == pytest.approx(100.0)


def test_a_server_that_falls_behind_does_not_keep_pace_and_the_span_understates_nothing() -> None:
    # each request waits longer than the last: the queue grows, completions lag arrivals
    records = [rec(i, i / 10, 0.5 + i * 0.05) for i in range(200)]
    w = window_stats(records, 20.0)
    assert w is not None and not w.keeps_pace and w.late_completion_ratio < PACE_THRESHOLD
    summary = summarize(records, duration=records[-1].send_time + records[-1].latency, slos={"e2el": 60_000},
                        arrival_window_s=20.0)
    assert summary.window is w or summary.window == w
    # the whole-span throughput divides by the drain too: it is below the window's count of arrivals served
    assert summary.request_throughput < 200 / 20.0


def test_capacity_needs_attainment_and_pace() -> None:
    def point(rate: float, records: list[RequestRecord]) -> SweepPoint:
        s = summarize(records, duration=max(r.send_time + r.latency for r in records), slos={"e2el": 60_000},
                      arrival_window_s=20.0)
        return SweepPoint(rate, s, {})

    held = point(10, steady(10, 20, 0.5))
    behind = point(20, [rec(i, i / 20, 0.5 + i * 0.05) for i in range(400)])
    assert held.summary.slo_attainment == behind.summary.slo_attainment == 1.0  # the SLO alone cannot tell
    capacity = find_capacity([held, behind], 0.9)
    assert capacity.highest_rate == 10 and not capacity.all_met


def test_empty_and_failed_runs() -> None:
    assert window_stats([]) is None
    w = window_stats([rec(0, 0.0, None), rec(1, 1.5, None)], 2.0)
    assert w is not None and w.window_request_throughput == 0.0 and w.late_completion_ratio == 0.0
