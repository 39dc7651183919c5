"""`SemiPDMetricsCollector`: records request lifecycles and answers sliding-window statistics.

Hot path. Each ``record_*`` call takes one lock, updates the request's record and writes at
most one row into a numeric ring (see `semipd.metrics.ring`); the window query masks those rings
with numpy, so it costs the same for 100 or 100,000 requests in the window. Token gaps are
buffered and written in bulk (`semipd.metrics.token_gaps`), and an executor that does not
stream tokens one by one records a whole decode step in one call (`record_decode_step`).

The window can start later than ``now - window_size_seconds``: ``get_current_window_metrics
(since=t)`` gives the statistics of the samples since ``t`` only (the SLO controller asks for the
samples since its last SM move, or since the load shifted).

Memory is bounded: at most ``max_in_flight`` live requests (the oldest is dropped when a new one
arrives beyond that, counted in ``num_evicted_in_flight``), at most ``max_history_size`` finished
ones (the oldest evicted, counted in ``num_evicted``), and at most ``max_history_size`` arrival and
first-token events and ``max_itl_samples`` token gaps for the window statistics. When a bound drops
events that still fall inside the window, `AggregatedMetrics.window_truncated` says so.

Bad input never raises into the caller: an event for an id never seen is counted in
``unknown_request_events``; an event that contradicts what was recorded (a second first token,
an event after completion, a time before arrival) in ``out_of_order_events``. Both are logged at
debug level. A non-terminal event of either kind is ignored. A completion or abort whose time is
earlier than the request's latest recorded time still ends the request (so the in-flight set stays
right) at that latest time, and counts as out of order. A repeated prefill start, prefill end or
decode start (a preempted request is prefilled again) keeps the first time and counts in
``repeated_events``.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from semipd.allocation import SMAllocation
from semipd.clock import Clock, RealClock
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.request import RequestMetrics, RequestStatus, SystemMetrics
from semipd.metrics.ring import EventRing
from semipd.metrics.snapshot import decode_snapshot, encode_rows, record_row
from semipd.metrics.token_gaps import TokenGaps
from semipd.metrics.window import (
    NAN,
    effective_window_length,
    finished_row,
    real_time_dict,
    select_window,
    summarize,
)

logger = logging.getLogger(__name__)

CompletionListener = Callable[[RequestMetrics], None]
# Module constants: an enum member lookup costs a descriptor call on the hot path.
_COMPLETED, _FAILED, _ABORTED, _HANDED_OFF = (RequestStatus.COMPLETED, RequestStatus.FAILED, RequestStatus.ABORTED,
                                              RequestStatus.HANDED_OFF)


class SemiPDMetricsCollector:
    """Per-request lifecycle metrics over a sliding window of ``window_size_seconds``. Thread-safe.

    Every ``record_*`` method takes an optional ``timestamp`` (clock seconds); without one it reads
    the clock (`RealClock` by default; the simulator passes its `VirtualClock`).
    """

    def __init__(
        self,
        window_size_seconds: float = 30.0,
        max_history_size: int = 1000,
        clock: Clock | None = None,
        *,
        max_in_flight: int = 100_000,
        max_itl_samples: int = 100_000,
    ) -> None:
        if not window_size_seconds > 0:
            raise ValueError(f"window_size_seconds must be > 0, got {window_size_seconds}")
        for name, value in (("max_history_size", max_history_size), ("max_in_flight", max_in_flight),
                            ("max_itl_samples", max_itl_samples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.window_size_seconds = float(window_size_seconds)
        self.max_history_size = max_history_size
        self.max_in_flight = max_in_flight
        self.clock: Clock = clock if clock is not None else RealClock()
        self._now = self.clock.now
        self._lock = threading.Lock()
        self._in_flight: dict[str, RequestMetrics] = {}
        self._history: list[RequestMetrics | None] = [None] * max_history_size
        self._finished_index: dict[str, int] = {}
        self._finished = EventRing(max_history_size, 6)
        self._first_tokens = EventRing(max_history_size, 3)
        self._arrivals = EventRing(max_history_size, 2)
        self._tokens = TokenGaps(max_itl_samples)
        self._next_serial = 0
        self._num_waiting_prefill = 0
        self._first_arrival: float | None = None
        self._system: SystemMetrics | None = None
        self._listeners: tuple[CompletionListener, ...] = ()
        self._totals = dict.fromkeys(
            ("num_arrivals", "num_completed_total", "num_failed_total", "num_aborted_total", "num_handed_off_total",
             "num_evicted_in_flight", "unknown_request_events", "out_of_order_events", "repeated_events"), 0)

    # -- lifecycle events ---------------------------------------------------------------
    def record_request_arrival(self, rid: str, input_length: int, timestamp: float | None = None) -> None:
        """A request arrived with `input_length` prompt tokens. A duplicate of a live id is out of order."""
        t = self._now() if timestamp is None else timestamp
        with self._lock:
            in_flight = self._in_flight
            if rid in in_flight:
                self._out_of_order(rid, "arrival", t)
                return
            if len(in_flight) >= self.max_in_flight:
                self._evict_oldest_in_flight()
            in_flight[rid] = RequestMetrics(rid, t, input_length=input_length, serial=self._next_serial)
            self._next_serial += 1
            self._num_waiting_prefill += 1
            self._totals["num_arrivals"] += 1
            ring = self._arrivals
            ring.data[:, ring.claim()] = (t, input_length)
            if self._first_arrival is None or t < self._first_arrival:
                self._first_arrival = t

    def record_prefill_start(self, rid: str, timestamp: float | None = None) -> None:
        """Prefill (the first chunk, if chunked) of the request started."""
        self._record_phase(rid, "prefill_start_time", timestamp)

    def record_prefill_end(self, rid: str, timestamp: float | None = None) -> None:
        """Prefill of the request finished (its KV cache is complete)."""
        self._record_phase(rid, "prefill_end_time", timestamp)

    def record_decode_start(self, rid: str, timestamp: float | None = None) -> None:
        """The decode side admitted the request."""
        self._record_phase(rid, "decode_start_time", timestamp)

    def record_first_token(self, rid: str, timestamp: float | None = None) -> None:
        """The first output token was produced (TTFT = this - arrival)."""
        t = self._now() if timestamp is None else timestamp
        with self._lock:
            rec = self._in_flight.get(rid)
            if rec is None:
                self._reject(rid, "first_token", t)
                return
            arrival = rec.arrival_time
            if rec.first_token_time is not None or t < arrival:
                self._out_of_order(rid, "first_token", t)
                return
            rec.first_token_time = t
            self._num_waiting_prefill -= 1
            start = rec.prefill_start_time
            ring = self._first_tokens
            ring.data[:, ring.claim()] = (t, t - arrival, NAN if start is None else start - arrival)

    def record_token(self, rid: str, timestamp: float | None = None) -> None:
        """One streamed token after the first; the gap to the previous token is an ITL sample."""
        t = self._now() if timestamp is None else timestamp
        with self._lock:
            rec = self._in_flight.get(rid)
            if rec is None:
                self._reject(rid, "token", t)
                return
            times = rec.token_times
            prev = rec.last_token_time
            if prev is None:
                prev = rec.first_token_time
            if t < (prev if prev is not None else rec.arrival_time):
                self._out_of_order(rid, "token", t)
                return
            if times is None:
                rec.token_times = [t]
            else:
                times.append(t)
            rec.last_token_time = t
            if prev is not None:
                self._tokens.add(t, t - prev, rec.serial)

    def record_decode_step(self, rids: Iterable[str], timestamp: float | None = None) -> None:
        """One decode step gave each request in `rids` one token at the same time: the bulk form of
        `record_token` for executors that do not stream (the simulator). It feeds the same window
        statistics (ITL, streaming TPOT) but keeps no per-token times on the records, so
        `RequestMetrics.itl_ms` stays empty for these tokens. Cost: one lock per step and a dict
        lookup and two list appends per request."""
        t = self._now() if timestamp is None else timestamp
        gaps: list[float] = []
        serials: list[int] = []
        add_gap, add_serial = gaps.append, serials.append
        with self._lock:
            get = self._in_flight.get
            for rid in rids:
                rec = get(rid)
                if rec is None:
                    self._reject(rid, "token", t)
                    continue
                prev = rec.last_token_time
                if prev is None or prev > t:  # not the common case of a token after a token
                    prev = self._gap_start(rec, t)
                    if prev is None:
                        continue
                rec.last_token_time = t
                add_gap(t - prev)
                add_serial(rec.serial)
            if gaps:
                self._tokens.add_step(t, gaps, serials)

    def record_request_completion(
        self, rid: str, output_length: int, success: bool = True, timestamp: float | None = None
    ) -> None:
        """The request finished with `output_length` output tokens (failed when not `success`)."""
        self._end(rid, _COMPLETED if success else _FAILED, int(output_length), timestamp)

    def record_request_abort(self, rid: str, timestamp: float | None = None) -> None:
        """The request was cancelled before finishing."""
        self._end(rid, _ABORTED, 0, timestamp)

    def record_handoff(self, rid: str, timestamp: float | None = None) -> None:
        """The request left this process for another one (a prefill process handing it to decode):
        it stops counting as in flight here and is kept in history with ``handed_off=True``.
        A later prefill end or decode start still fills in its record."""
        self._end(rid, _HANDED_OFF, 0, timestamp)

    def record_system_metrics(
        self,
        num_running_requests: int = 0,
        num_waiting_requests: int = 0,
        kv_cache_usage: float = 0.0,
        sm_allocation: SMAllocation | None = None,
        timestamp: float | None = None,
    ) -> SystemMetrics:
        """Store the engine's current state (the latest call wins); returns the snapshot stored.
        Raises ValueError for values out of range (see `SystemMetrics`)."""
        t = self._now() if timestamp is None else timestamp
        snapshot = SystemMetrics(
            timestamp=t,
            num_running_requests=num_running_requests,
            num_waiting_requests=num_waiting_requests,
            kv_cache_usage=kv_cache_usage,
            prefill_sm_percentage=None if sm_allocation is None else sm_allocation.prefill_percentage,
            decode_sm_percentage=None if sm_allocation is None else sm_allocation.decode_percentage,
        )
        with self._lock:
            self._system = snapshot
        return snapshot

    # -- listeners ------------------------------------------------------------------------
    def add_completion_listener(self, listener: CompletionListener) -> None:
        """Call `listener(record)` whenever a request ends here (completed, failed, aborted or
        handed off), in the recording thread, after the collector's lock is released. Keep it
        cheap: it runs on the engine's hot path. Exceptions are logged, never propagated."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_completion_listener(self, listener: CompletionListener) -> None:
        with self._lock:
            self._listeners = tuple(fn for fn in self._listeners if fn != listener)

    # -- queries ----------------------------------------------------------------------------
    def get_current_window_metrics(self, since: float | None = None) -> AggregatedMetrics:
        """Statistics over [now - window_size_seconds, now] (see `semipd.metrics.window`); with
        `since`, over [max(now - window_size_seconds, since), now], e.g. the samples taken since
        an SM reallocation. Rates divide by the length of that span."""
        with self._lock:
            end = self._now()
            start = end - self.window_size_seconds
            if since is not None and since > start:
                start = min(since, end)
            fin, ft, tokens = self._finished, self._first_tokens, self._tokens
            token_rows = tokens.between(start, end)
            samples = select_window(fin.view(), ft.view(), self._arrivals.view(), token_rows, start, end)
            num_in_flight = len(self._in_flight)
            waiting = self._num_waiting_prefill
            truncated = not all(r.covers(start) for r in (fin, ft, self._arrivals, tokens))
            first_arrival = self._first_arrival
        return summarize(
            samples,
            window_start=start,
            window_end=end,
            effective_length=effective_window_length(end - start, end, first_arrival),
            num_in_flight=num_in_flight,
            num_waiting_prefill=waiting,
            num_decoding=num_in_flight - waiting,
            window_truncated=truncated,
        )

    def get_real_time_metrics(self) -> dict[str, Any]:
        """The current window as a flat dict (the seed's keys and more).

        Window: ``timestamp`` (window end, clock s), ``window_start_time``, ``window_size_seconds``.
        Latencies in ms, each with ``_mean_ms``, ``_p50_ms``, ``_p90_ms``, ``_p95_ms``, ``_p99_ms``:
        ``ttft_*`` and ``queue_time_*`` (requests whose first token fell in the window), ``tpot_*``
        and ``e2e_latency_*`` (completed in the window), ``itl_*`` (tokens streamed in the window).
        Rates per second: ``request_throughput`` (completions), ``request_arrival_rate``,
        ``input_token_throughput``, ``output_token_throughput``, ``total_token_throughput``.
        Counts: ``num_completed``, ``num_failed``, ``num_aborted`` (ended in the window),
        ``num_in_flight``, ``num_waiting_prefill``, ``num_decoding`` (now), ``num_ttft_samples``,
        ``num_tpot_samples``; ``window_truncated`` (bool, see `AggregatedMetrics`).
        Latest `SystemMetrics` (None until one is recorded): ``num_running_requests``,
        ``num_waiting_requests``, ``kv_cache_usage``, ``prefill_sm_percentage``,
        ``decode_sm_percentage``, ``system_metrics_timestamp``.
        Health counters: ``unknown_request_events``, ``out_of_order_events``, ``num_evicted``,
        ``num_evicted_in_flight``.
        """
        out: dict[str, Any] = dict(real_time_dict(self.get_current_window_metrics(), self.window_size_seconds))
        with self._lock:
            system = self._system
            stats = self._stats_locked()
        for key in ("num_running_requests", "num_waiting_requests", "kv_cache_usage", "prefill_sm_percentage",
                    "decode_sm_percentage"):
            out[key] = None if system is None else getattr(system, key)
        out["system_metrics_timestamp"] = None if system is None else system.timestamp
        for key in ("unknown_request_events", "out_of_order_events", "num_evicted", "num_evicted_in_flight"):
            out[key] = stats[key]
        return out

    def get_system_metrics(self) -> SystemMetrics | None:
        """The latest `SystemMetrics` recorded, or None."""
        with self._lock:
            return self._system

    def in_flight_counts(self) -> tuple[int, int]:
        """(requests in flight without a first token, requests in flight with one), now."""
        with self._lock:
            waiting = self._num_waiting_prefill
            return waiting, len(self._in_flight) - waiting

    def is_in_flight(self, rid: str) -> bool:
        """True while `rid` is live here (arrived, not ended or handed off)."""
        with self._lock:
            return rid in self._in_flight

    def get_request(self, rid: str) -> RequestMetrics | None:
        """A copy of the live or retained record of `rid`, or None."""
        with self._lock:
            rec = self._in_flight.get(rid)
            if rec is None:
                slot = self._finished_index.get(rid)
                rec = None if slot is None else self._history[slot]
            if rec is None:
                return None
            out = copy.copy(rec)
            out.token_times = None if rec.token_times is None else list(rec.token_times)
            return out

    def get_stats(self) -> dict[str, int]:
        """Cumulative counters: ``num_arrivals``, ``num_completed_total``, ``num_failed_total``,
        ``num_aborted_total``, ``num_handed_off_total``, ``num_in_flight``, ``history_size``,
        ``num_evicted`` (finished records dropped from history), ``num_evicted_in_flight``,
        ``unknown_request_events``, ``out_of_order_events``, ``repeated_events``."""
        with self._lock:
            return self._stats_locked()

    def snapshot(self) -> bytes:
        """Every live and retained record, msgpack-encoded, for `MetricsAggregator` in another process.

        Live records are copied under the lock; finished ones (which no longer change, apart from a
        handed-off request's late phase times) are encoded after it is released, so a large
        history does not stall the recording threads."""
        with self._lock:
            rows = [record_row(rec) for rec in self._in_flight.values()]
            history = list(self._history)
            now = self._now()
        rows.extend(record_row(rec) for rec in history if rec is not None)
        return encode_rows(rows, now)

    @staticmethod
    def records_from_snapshot(data: bytes) -> list[RequestMetrics]:
        """The records encoded by `snapshot()`."""
        return decode_snapshot(data)

    # -- internals (called with the lock held unless noted) ---------------------------------
    def _stats_locked(self) -> dict[str, int]:
        stats = dict(self._totals)
        stats["num_in_flight"] = len(self._in_flight)
        stats["history_size"] = self._finished.size
        stats["num_evicted"] = self._finished.evicted
        return stats

    def _gap_start(self, rec: RequestMetrics, t: float) -> float | None:
        """For `record_decode_step`: the time a token at `t` counts its gap from (the first token's),
        or None when it has none - no first token recorded (the time is kept), or out of order."""
        prev = rec.last_token_time
        if prev is None:
            prev = rec.first_token_time
        if t < (prev if prev is not None else rec.arrival_time):
            self._out_of_order(rec.request_id, "token", t)
            return None
        if prev is None:
            rec.last_token_time = t
        return prev

    def _record_phase(self, rid: str, attr: str, timestamp: float | None) -> None:
        t = self._now() if timestamp is None else timestamp
        with self._lock:
            rec = self._in_flight.get(rid)
            if rec is None:
                slot = self._finished_index.get(rid)
                rec = None if slot is None else self._history[slot]
                if rec is None or not rec.handed_off or rec.completion_time is not None:
                    self._reject(rid, attr, t)
                    return
            if getattr(rec, attr) is not None:
                self._totals["repeated_events"] += 1
                return
            if t < rec.arrival_time:
                self._out_of_order(rid, attr, t)
                return
            setattr(rec, attr, t)

    def _end(self, rid: str, status: RequestStatus, output_length: int, timestamp: float | None) -> None:
        """End `rid` with `status` (not called with the lock held)."""
        t = self._now() if timestamp is None else timestamp
        with self._lock:
            rec = self._in_flight.pop(rid, None)
            if rec is None:
                self._reject(rid, status.name.lower(), t)
                return
            latest = rec.latest_time()
            if latest is not None and t < latest:
                self._out_of_order(rid, status.name.lower(), t)
                t = latest
            if rec.first_token_time is None:
                self._num_waiting_prefill -= 1
            if status is _HANDED_OFF:
                rec.handed_off = True
                self._totals["num_handed_off_total"] += 1
            else:
                rec.completion_time = t
                if status is _ABORTED:
                    rec.aborted = True
                    self._totals["num_aborted_total"] += 1
                else:
                    rec.output_length = output_length
                    rec.success = status is _COMPLETED
                    self._totals["num_completed_total" if rec.success else "num_failed_total"] += 1
            slot = self._finished.push(finished_row(rec, t, status))
            old = self._history[slot]
            if old is not None and self._finished_index.get(old.request_id) == slot:
                del self._finished_index[old.request_id]
            self._history[slot] = rec
            self._finished_index[rid] = slot
            listeners = self._listeners
        for listener in listeners:
            try:
                listener(rec)
            except Exception:
                logger.warning("metrics completion listener %r failed", listener, exc_info=True)

    def _evict_oldest_in_flight(self) -> None:
        rid = next(iter(self._in_flight))
        rec = self._in_flight.pop(rid)
        if rec.first_token_time is None:
            self._num_waiting_prefill -= 1
        self._totals["num_evicted_in_flight"] += 1
        logger.debug("metrics: in-flight bound %d reached, dropped request %r", self.max_in_flight, rid)

    def _reject(self, rid: str, event: str, t: float) -> None:
        """An event for a request that is not live: out of order if it finished here, else unknown."""
        if rid in self._finished_index:
            self._out_of_order(rid, event, t)
            return
        self._totals["unknown_request_events"] += 1
        logger.debug("metrics: %s at %.6f for unknown request %r ignored", event, t, rid)

    def _out_of_order(self, rid: str, event: str, t: float) -> None:
        self._totals["out_of_order_events"] += 1
        logger.debug("metrics: out-of-order %s at %.6f for request %r", event, t, rid)
