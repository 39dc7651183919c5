"""Property tests: for random event streams the window statistics equal numpy's over the same samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semipd.clock import VirtualClock
from semipd.metrics import MetricsAggregator, SemiPDMetricsCollector
from semipd.metrics.ring import EventRing
from semipd.metrics.token_gaps import FLUSH, TokenGaps
from semipd.metrics.window import percentiles_of_sorted

END_KINDS = ("complete", "fail", "abort", "live")
times = st.floats(min_value=0.0, max_value=100.0, allow_nan=False, allow_infinity=False)
spans = st.floats(min_value=0.0, max_value=5.0, allow_nan=False, allow_infinity=False)


@dataclass
class Gen:
    arrival: float
    queue: float
    prefill: float
    gaps: list[float]
    tail: float
    end: str
    has_prefill_start: bool
    input_length: int

    def events(self, rid: str) -> list[tuple[float, str, tuple]]:
        a = self.arrival
        out: list[tuple[float, str, tuple]] = [(a, "arrival", (rid, self.input_length))]
        ps = a + self.queue
        if self.has_prefill_start:
            out.append((ps, "prefill_start", (rid,)))
        t = ps + self.prefill
        out.append((t, "first_token", (rid,)))
        for g in self.gaps:
            t = t + g
            out.append((t, "token", (rid,)))
        t_end = t + self.tail
        if self.end in ("complete", "fail"):
            out.append((t_end, "completion", (rid, 1 + len(self.gaps), self.end == "complete")))
        elif self.end == "abort":
            out.append((t_end, "abort", (rid,)))
        return out


gens = st.builds(
    Gen, arrival=times, queue=spans, prefill=spans, gaps=st.lists(spans, max_size=4), tail=spans,
    end=st.sampled_from(END_KINDS), has_prefill_start=st.booleans(), input_length=st.integers(1, 4096),
)


def _replay(streams: list[Gen], now: float, window: float,
            bulk_tokens: bool = False) -> tuple[SemiPDMetricsCollector, list]:
    """Replay the streams' events up to `now`; with `bulk_tokens`, each token goes through
    `record_decode_step` (tokens at the same time in one call) instead of `record_token`."""
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=window, max_history_size=1000, clock=clock)
    events = [e for i, g in enumerate(streams) for e in g.events(f"r{i}")]
    events = sorted((e for e in events if e[0] <= now), key=lambda e: e[0])  # stable: lifecycle order on ties
    step: list[str] = []
    for i, (t, kind, args) in enumerate(events):
        if bulk_tokens and kind == "token":
            step.append(args[0])
            if i + 1 == len(events) or events[i + 1][1] != "token" or events[i + 1][0] != t:
                m.record_decode_step(step, timestamp=t)
                step = []
        elif kind == "arrival":
            m.record_request_arrival(*args, timestamp=t)
        elif kind == "prefill_start":
            m.record_prefill_start(*args, timestamp=t)
        elif kind == "first_token":
            m.record_first_token(*args, timestamp=t)
        elif kind == "token":
            m.record_token(*args, timestamp=t)
        elif kind == "completion":
            m.record_request_completion(args[0], args[1], success=args[2], timestamp=t)
        else:
            m.record_request_abort(*args, timestamp=t)
    clock.set(now)
    return m, events


def _expected(events: list, now: float, window: float, since: float | None = None) -> dict:
    start = now - window if since is None else max(now - window, min(since, now))
    inw = lambda t: start <= t <= now  # noqa: E731
    arrival: dict[str, float] = {}
    prefill_start: dict[str, float] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    in_len: dict[str, int] = {}
    ex = {k: [] for k in ("ttft", "tpot", "itl", "queue", "e2e", "in", "out", "arrived_in")}
    gaps: dict[str, list[float]] = {}
    counts = {"completed": 0, "failed": 0, "aborted": 0, "arrivals": 0}
    ended: set[str] = set()
    for t, kind, args in events:
        rid = args[0]
        if kind == "arrival":
            arrival[rid], in_len[rid] = t, args[1]
            counts["arrivals"] += inw(t)
            if inw(t):
                ex["arrived_in"].append(args[1])
        elif kind == "prefill_start":
            prefill_start[rid] = t
        elif kind == "first_token":
            first[rid] = last[rid] = t
            if inw(t):
                ex["ttft"].append((t - arrival[rid]) * 1000)
                if rid in prefill_start:
                    ex["queue"].append((prefill_start[rid] - arrival[rid]) * 1000)
        elif kind == "token":
            if inw(t):
                ex["itl"].append((t - last[rid]) * 1000)
                gaps.setdefault(rid, []).append((t - last[rid]) * 1000)
            last[rid] = t
        else:
            ended.add(rid)
            if not inw(t):
                continue
            if kind == "abort":
                counts["aborted"] += 1
            elif not args[2]:
                counts["failed"] += 1
            else:
                counts["completed"] += 1
                n_out = args[1]
                if n_out > 1:
                    ex["tpot"].append((t - first[rid]) / (n_out - 1) * 1000)
                ex["e2e"].append((t - arrival[rid]) * 1000)
                ex["in"].append(in_len[rid])
                ex["out"].append(n_out)
    live = set(arrival) - ended
    ex["streaming"] = [float(np.mean(g)) for g in gaps.values() if len(g) >= 2]
    eff = max(0.0, min(now - start, now - min(arrival.values()))) if arrival else 0.0
    return {"samples": ex, "counts": counts, "eff": eff, "live": len(live),
            "waiting": sum(1 for r in live if r not in first)}


def _pct(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else 0.0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams=st.lists(gens, max_size=25), now=st.floats(0.0, 130.0), window=st.floats(0.5, 60.0))
def test_window_equals_numpy_over_the_same_samples(streams: list[Gen], now: float, window: float) -> None:
    m, events = _replay(streams, now, window)
    agg = m.get_current_window_metrics()
    exp = _expected(events, now, window)
    ex = exp["samples"]
    approx = lambda v: pytest.approx(v, rel=1e-9, abs=1e-9)  # noqa: E731
    assert sorted(agg.ttft_samples.tolist()) == approx(sorted(ex["ttft"]))
    assert sorted(agg.tpot_samples.tolist()) == approx(sorted(ex["tpot"]))
    for name, key in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("queue_time", "queue"),
                      ("e2e_latency", "e2e")):
        for p in (50, 90, 95, 99):
            assert getattr(agg, f"{name}_p{p}") == approx(_pct(ex[key], p)), (name, p)
        assert getattr(agg, f"{name}_mean") == approx(float(np.mean(ex[key])) if ex[key] else 0.0)
    for p in (1.0, 37.5, 99.9):
        assert agg.ttft_percentile(p) == approx(_pct(ex["ttft"], p))
    c = exp["counts"]
    assert (agg.num_completed, agg.num_failed, agg.num_aborted) == (c["completed"], c["failed"], c["aborted"])
    assert (agg.num_in_flight, agg.num_waiting_prefill) == (exp["live"], exp["waiting"])
    assert agg.num_decoding == exp["live"] - exp["waiting"]
    per_s = lambda count: count / exp["eff"] if exp["eff"] > 0 else 0.0  # noqa: E731
    assert agg.request_throughput == approx(per_s(c["completed"]))
    assert agg.request_arrival_rate == approx(per_s(c["arrivals"]))
    assert agg.input_token_throughput == approx(per_s(sum(ex["in"])))
    assert agg.output_token_throughput == approx(per_s(sum(ex["out"])))
    assert agg.total_token_throughput == approx(per_s(sum(ex["in"]) + sum(ex["out"])))
    assert agg.arrival_input_token_rate == approx(per_s(sum(ex["arrived_in"])))
    assert sorted(agg.streaming_tpot_samples.tolist()) == approx(sorted(ex["streaming"]))
    assert not agg.window_truncated
    stats = m.get_stats()
    assert stats["out_of_order_events"] == 0 and stats["unknown_request_events"] == 0


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams=st.lists(gens, max_size=20), now=st.floats(0.0, 130.0), window=st.floats(0.5, 60.0),
       since=st.floats(-10.0, 140.0))
def test_window_since_a_time_equals_numpy_over_the_later_samples(streams: list[Gen], now: float, window: float,
                                                                  since: float) -> None:
    m, events = _replay(streams, now, window)
    agg = m.get_current_window_metrics(since=since)
    exp = _expected(events, now, window, since)
    ex = exp["samples"]
    approx = lambda v: pytest.approx(v, rel=1e-9, abs=1e-9)  # noqa: E731
    assert agg.window_start_time == approx(max(now - window, min(since, now)))
    for name, key in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl")):
        assert getattr(agg, f"{name}_p95") == approx(_pct(ex[key], 95)), name
    assert sorted(agg.streaming_tpot_samples.tolist()) == approx(sorted(ex["streaming"]))
    per_s = lambda count: count / exp["eff"] if exp["eff"] > 0 else 0.0  # noqa: E731
    assert agg.request_arrival_rate == approx(per_s(exp["counts"]["arrivals"]))
    assert agg.request_throughput == approx(per_s(exp["counts"]["completed"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams=st.lists(gens, max_size=20), now=st.floats(0.0, 130.0), window=st.floats(0.5, 60.0))
def test_bulk_decode_steps_give_the_window_of_single_tokens(streams: list[Gen], now: float, window: float) -> None:
    single, _ = _replay(streams, now, window)
    bulk, _ = _replay(streams, now, window, bulk_tokens=True)
    got, want = bulk.get_current_window_metrics(), single.get_current_window_metrics()
    for name, value in vars(want).items():
        if isinstance(value, np.ndarray):
            assert sorted(getattr(got, name).tolist()) == pytest.approx(sorted(value.tolist())), name
        else:
            assert getattr(got, name) == pytest.approx(value, rel=1e-9, abs=1e-9), name
    assert bulk.get_stats() == single.get_stats()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams=st.lists(gens, max_size=20), now=st.floats(0.0, 130.0), window=st.floats(0.5, 60.0))
def test_aggregator_over_a_snapshot_equals_the_collector(streams: list[Gen], now: float, window: float) -> None:
    m, _ = _replay(streams, now, window)
    aggregator = MetricsAggregator(window_size_seconds=window, clock=m.clock)
    aggregator.update_decode_metrics(m.snapshot())
    got, want = aggregator.get_aggregated_metrics(), m.get_current_window_metrics()
    for name, value in vars(want).items():
        if isinstance(value, np.ndarray):
            assert sorted(getattr(got, name).tolist()) == pytest.approx(sorted(value.tolist())), name
        else:
            assert getattr(got, name) == pytest.approx(value, rel=1e-9, abs=1e-9), name


@settings(max_examples=300, deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=300),
       extra=st.lists(st.floats(0.0, 100.0), max_size=5))
def test_percentiles_of_sorted_equal_numpy_exactly(values: list[float], extra: list[float]) -> None:
    ps = (0.0, 50.0, 90.0, 95.0, 99.0, 100.0, *extra)
    arr = np.array(values)
    assert percentiles_of_sorted(np.sort(arr), ps) == tuple(float(v) for v in np.percentile(arr, ps))


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), batches=st.lists(st.integers(0, 30), max_size=8))
def test_ring_push_many_equals_one_push_per_row(capacity: int, batches: list[int]) -> None:
    one, many = EventRing(capacity, 2), EventRing(capacity, 2)
    t = 0.0
    for k in batches:
        rows = np.array([t + np.arange(k), np.arange(k) * 0.5])
        t += k
        for j in range(k):
            one.push(tuple(rows[:, j]))
        many.push_many(rows)
        assert (many.size, many.next_index, many.evicted) == (one.size, one.next_index, one.evicted)
        assert many.evicted_max_time == one.evicted_max_time
        np.testing.assert_array_equal(many.view(), one.view())


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 12), batches=st.lists(st.lists(st.floats(0.0, 5.0), max_size=20), max_size=8),
       start=st.floats(-1.0, 60.0), length=st.floats(0.0, 60.0), shuffled=st.booleans())
def test_ring_between_equals_a_mask(capacity: int, batches: list[list[float]], start: float, length: float,
                                   shuffled: bool) -> None:
    """`between` finds the same rows by binary search (rows in time order) as a mask does (any order)."""
    ring = EventRing(capacity, 2)
    t = 0.0
    for steps in batches:
        times = t + np.cumsum(steps) if not shuffled else t + np.asarray(steps)[::-1]
        ring.push_many(np.array([times, np.arange(len(steps), dtype=float)]).reshape(2, len(steps)))
        t = float(times.max()) if len(steps) else t
    rows = ring.view()
    mask = (rows[0] >= start) & (rows[0] <= start + length)
    got = ring.between(start, start + length)
    assert sorted(map(tuple, got.T.tolist())) == sorted(map(tuple, rows[:, mask].T.tolist()))
    if not shuffled:
        assert ring.ordered


def test_token_gaps_are_written_in_bulk_and_read_whole() -> None:
    gaps = TokenGaps(capacity=10_000)
    gaps.add_step(1.0, [0.1] * (FLUSH - 1), list(range(FLUSH - 1)))
    assert gaps.ring.size == 0  # buffered
    gaps.add(1.5, 0.5, 7)
    assert gaps.ring.size == FLUSH and not gaps.gaps  # the threshold flushed it
    gaps.add(2.0, 0.5, 7)
    rows = gaps.view()  # reads flush the rest
    assert rows.shape == (3, FLUSH + 1) and rows[:, -1].tolist() == [2.0, 0.5, 7.0]
