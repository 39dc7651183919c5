"""WindowReader: windows since the last switch or load shift, and load-shift detection."""

from __future__ import annotations

import pytest

from semipd.clock import VirtualClock
from semipd.metrics import AggregatedMetrics, SemiPDMetricsCollector
from semipd.slo.window_reader import WindowReader, load_shifted, takes_since


def collector_with(arrivals: list[tuple[float, int]], now: float, window: float = 30.0) -> SemiPDMetricsCollector:
    """A collector (on its own clock, at `now`) that saw arrivals (time, prompt length), each with a TTFT of 50 ms."""
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=window, clock=clock, max_history_size=10_000)
    for k, (t, n) in enumerate(arrivals):
        m.record_request_arrival(str(k), n, timestamp=t)
        m.record_first_token(str(k), timestamp=t + 0.05)
    clock.set(now)
    return m


def steady(start: float, end: float, rate: float, length: int) -> list[tuple[float, int]]:
    step = 1.0 / rate
    return [(start + k * step, length) for k in range(int((end - start) * rate))]


def test_only_sources_that_take_since_get_fresh_windows() -> None:
    plain_window = AggregatedMetrics(window_start_time=-25.0, window_end_time=5.0)

    class Plain:
        def get_current_window_metrics(self) -> AggregatedMetrics:
            return plain_window

    assert takes_since(SemiPDMetricsCollector()) and not takes_since(Plain())
    reader = WindowReader(Plain(), horizon=10.0)
    reader.mark_switch(0.0)
    assert reader.read(5.0) is plain_window and not reader.supports_since


@pytest.mark.parametrize(("recent", "shifted"), [
    ((5.0, 1000), False),  # the same load
    ((6.5, 1300), False),  # noise-sized changes
    ((15.0, 1000), True),  # 3x the arrival rate
    ((5.0, 200), True),  # prompts 5x shorter
    ((1.5, 4000), True),  # 3.3x fewer arrivals, of 4x longer prompts
])
def test_load_shift_detection(recent: tuple[float, int], shifted: bool) -> None:
    m = collector_with(steady(0.0, 50.0, 5.0, 1000) + steady(50.0, 60.0, *recent), now=60.0)
    whole = m.get_current_window_metrics()
    last = m.get_current_window_metrics(since=50.0)
    assert load_shifted(last, whole, ratio=2.0, min_arrivals=10) is shifted


def test_too_few_arrivals_are_no_shift() -> None:
    m = collector_with(steady(0.0, 50.0, 0.5, 1000) + steady(50.0, 60.0, 0.5, 100), now=60.0)
    assert not load_shifted(m.get_current_window_metrics(since=50.0), m.get_current_window_metrics(), 2.0, 10)


def test_a_shift_starts_the_fresh_window_until_the_window_turns_over() -> None:
    m = collector_with(steady(0.0, 50.0, 5.0, 3000) + steady(50.0, 60.0, 15.0, 500), now=60.0)
    reader = WindowReader(m, horizon=10.0, shift_ratio=2.0)
    fresh = reader.read(60.0)
    assert reader.fresh_from == reader.shift_at == pytest.approx(50.0)
    assert fresh.window_start_time == pytest.approx(50.0)
    assert fresh.request_arrival_rate == pytest.approx(15.0)
    assert fresh.arrival_input_token_rate / fresh.request_arrival_rate == pytest.approx(500.0)
    m.clock.set(70.0)  # type: ignore[attr-defined]
    assert reader.read(70.0).window_start_time == pytest.approx(50.0)  # still since the shift
    m.clock.set(81.0)  # type: ignore[attr-defined]
    reader.read(81.0)
    assert reader.fresh_from is None  # the 30 s window no longer reaches back to the shift


def test_a_switch_starts_the_fresh_window_on_the_source_clock() -> None:
    m = collector_with(steady(0.0, 60.0, 5.0, 1000), now=1060.0 - 1000.0)
    reader = WindowReader(m, horizon=10.0)
    reader.mark_switch(1052.0)  # the controller's clock runs 1000 s ahead of the collector's
    window = reader.read(1060.0)
    assert window.window_start_time == pytest.approx(52.0) and window.window_end_time == pytest.approx(60.0)
    assert window.num_ttft_samples == 40


def test_validation() -> None:
    with pytest.raises(ValueError, match="horizon"):
        WindowReader(SemiPDMetricsCollector(), horizon=0.0)
    with pytest.raises(ValueError, match="shift_ratio"):
        WindowReader(SemiPDMetricsCollector(), horizon=10.0, shift_ratio=1.0)
