"""Property tests: for random event streams the window statistics equal numpy's over the same samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from semipd.clock import VirtualClock
from semipd.metrics import MetricsAggregator, SemiPDMetricsCollector
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


def _replay(streams: list[Gen], now: float, window: float) -> tuple[SemiPDMetricsCollector, list]:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(window_size_seconds=window, max_history_size=1000, clock=clock)
    events = [e for i, g in enumerate(streams) for e in g.events(f"r{i}")]
    events = sorted((e for e in events if e[0] <= now), key=lambda e: e[0])  # stable: lifecycle order on ties
    for t, kind, args in events:
        if kind == "arrival":
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


def _expected(events: list, now: float, window: float) -> dict:
    start = now - window
    inw = lambda t: start <= t <= now  # noqa: E731
    arrival: dict[str, float] = {}
    prefill_start: dict[str, float] = {}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    in_len: dict[str, int] = {}
    ex = {k: [] for k in ("ttft", "tpot", "itl", "queue", "e2e", "in", "out")}
    counts = {"completed": 0, "failed": 0, "aborted": 0, "arrivals": 0}
    ended: set[str] = set()
    for t, kind, args in events:
        rid = args[0]
        if kind == "arrival":
            arrival[rid], in_len[rid] = t, args[1]
            counts["arrivals"] += inw(t)
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
    eff = max(0.0, min(window, now - min(arrival.values()))) if arrival else 0.0
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
    assert not agg.window_truncated
    stats = m.get_stats()
    assert stats["out_of_order_events"] == 0 and stats["unknown_request_events"] == 0


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
