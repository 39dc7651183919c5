"""`SemiPDPrometheusExporter`: the collector's metrics in Prometheus text exposition.

Each exporter owns its own `CollectorRegistry`, so several can live in one process (tests,
two engines) without name collisions in the global registry.

How the histograms are fed: the exporter registers a completion listener on the collector that
only appends the ended request's record to a bounded queue (cheap on the engine's hot path);
`render()` (or `flush()`) observes the queued records: TTFT and queue time for every request that
has them (including handed-off ones, so a prefill process exports TTFT), TPOT and e2e latency for
successful completions, and one ITL observation per streamed-token gap. If more than
``max_pending`` records pile up between scrapes the oldest are dropped and counted in
``dropped_records``.

Gauges: ``num_requests_running`` / ``num_requests_waiting``, ``kv_cache_usage_perc`` and
``sm_allocation_percent{phase}`` are refreshed at render time from the collector's latest
`SystemMetrics` (running/waiting fall back to the collector's decoding/waiting-prefill counts when
no SystemMetrics was recorded). ``slo_violation_ratio{slo}`` and ``sm_reallocations_total{result}``
are set by the controller through `set_slo_violation_ratio` and `record_reallocation`.
"""

from __future__ import annotations

import threading
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.metrics.request import RequestMetrics

# Millisecond-scale token latencies (1..10 ms in 1 ms steps, then up to 2.5 s).
TOKEN_LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008, 0.009, 0.010, 0.015, 0.020,
                         0.030, 0.040, 0.050, 0.075, 0.100, 0.150, 0.200, 0.300, 0.500, 1.0, 2.5)
# TTFT and queue time: fine from 1 ms to 1 s, then coarse up to 60 s.
FIRST_TOKEN_BUCKETS = (0.001, 0.005, 0.010, 0.020, 0.030, 0.040, 0.050, 0.060, 0.080, 0.100, 0.125, 0.150,
                       0.200, 0.250, 0.300, 0.400, 0.500, 0.600, 0.750, 1.0, 1.5, 2.0, 2.5, 5.0, 7.5, 10.0,
                       15.0, 20.0, 30.0, 45.0, 60.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0)


class SemiPDPrometheusExporter:
    """Prometheus metrics (``semipd:`` names of DESIGN.md) for one collector."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, collector: SemiPDMetricsCollector, max_pending: int = 100_000) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.collector = collector
        self.registry = CollectorRegistry(auto_describe=True)
        self._max_pending = max_pending
        self._pending: deque[RequestMetrics] = deque(maxlen=max_pending)
        self._queue_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._received = 0
        self._taken = 0
        r = self.registry
        self.ttft = Histogram("semipd:time_to_first_token_seconds", "Time to first token (s), from arrival.",
                              buckets=FIRST_TOKEN_BUCKETS, registry=r)
        self.tpot = Histogram("semipd:time_per_output_token_seconds",
                              "Time per output token (s): (completion - first token) / (output tokens - 1).",
                              buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.itl = Histogram("semipd:inter_token_latency_seconds", "Gap between consecutive streamed tokens (s).",
                             buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("semipd:e2e_request_latency_seconds", "Arrival to completion (s).",
                             buckets=E2E_BUCKETS, registry=r)
        self.queue = Histogram("semipd:queue_time_seconds", "Arrival to prefill start (s).",
                               buckets=FIRST_TOKEN_BUCKETS, registry=r)
        self.running = Gauge("semipd:num_requests_running", "Requests in the decode batch.", registry=r)
        self.waiting = Gauge("semipd:num_requests_waiting", "Requests waiting for prefill.", registry=r)
        self.kv_usage = Gauge("semipd:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).", registry=r)
        self.sm_allocation = Gauge("semipd:sm_allocation_percent", "Share of SMs given to each phase (%).",
                                   ["phase"], registry=r)
        self.slo_violation = Gauge("semipd:slo_violation_ratio",
                                   "Measured percentile / SLO target (> 1 violates).", ["slo"], registry=r)
        self.reallocations = Counter("semipd:sm_reallocations", "SM reallocation requests by result.",
                                     ["result"], registry=r)
        for result in ("success", "failure"):
            self.reallocations.labels(result=result)
        self._synced_reallocations = {"success": 0, "failure": 0}
        collector.add_completion_listener(self._enqueue)

    @property
    def dropped_records(self) -> int:
        """Ended requests dropped from the queue before a render observed them."""
        with self._queue_lock:
            return self._received - self._taken - len(self._pending)

    def close(self) -> None:
        """Stop listening to the collector."""
        self.collector.remove_completion_listener(self._enqueue)

    def set_slo_violation_ratio(self, slo: str, ratio: float) -> None:
        """Set ``semipd:slo_violation_ratio{slo=...}`` (e.g. slo="ttft", ratio = p95 / target)."""
        self.slo_violation.labels(slo=slo).set(ratio)

    def record_reallocation(self, success: bool) -> None:
        """Count one SM reallocation request under ``result="success"`` or ``"failure"``."""
        self.reallocations.labels(result="success" if success else "failure").inc()

    def sync_reallocations(self, successes: int, failures: int) -> None:
        """Raise the reallocation counters to totals counted elsewhere (an engine in another process);
        totals below what is already counted are ignored."""
        for result, total in (("success", successes), ("failure", failures)):
            missing = total - self._synced_reallocations[result]
            if missing > 0:
                self.reallocations.labels(result=result).inc(missing)
                self._synced_reallocations[result] = total

    def flush(self) -> int:
        """Observe every queued record in the histograms; returns how many were observed."""
        with self._flush_lock:
            with self._queue_lock:
                batch = self._pending
                self._pending = deque(maxlen=self._max_pending)
                self._taken += len(batch)
            for rec in batch:
                self._observe(rec)
            return len(batch)

    def refresh_gauges(self) -> None:
        """Set the state gauges from the collector (see the module docstring)."""
        system = self.collector.get_system_metrics()
        if system is None:
            waiting, decoding = self.collector.in_flight_counts()
            self.running.set(decoding)
            self.waiting.set(waiting)
            return
        self.running.set(system.num_running_requests)
        self.waiting.set(system.num_waiting_requests)
        self.kv_usage.set(system.kv_cache_usage)
        if system.prefill_sm_percentage is not None:
            self.sm_allocation.labels(phase="prefill").set(system.prefill_sm_percentage)
        if system.decode_sm_percentage is not None:
            self.sm_allocation.labels(phase="decode").set(system.decode_sm_percentage)

    def render(self) -> bytes:
        """Flush, refresh the gauges and return the text exposition (``content_type``)."""
        self.flush()
        self.refresh_gauges()
        return generate_latest(self.registry)

    def _enqueue(self, rec: RequestMetrics) -> None:
        with self._queue_lock:
            self._received += 1
            self._pending.append(rec)

    def _observe(self, rec: RequestMetrics) -> None:
        ttft = rec.ttft_ms
        if ttft is not None:
            self.ttft.observe(ttft / 1000)
        queue = rec.queue_time_ms
        if queue is not None:
            self.queue.observe(queue / 1000)
        if rec.success:
            tpot = rec.tpot_ms
            if tpot is not None:
                self.tpot.observe(tpot / 1000)
            e2e = rec.e2e_latency_ms
            if e2e is not None:
                self.e2e.observe(e2e / 1000)
        for gap in rec.itl_ms:
            self.itl.observe(gap / 1000)
