"""`MetricsAggregator`: one window over the prefill process's and the decode process's records.

With prefill and decode in separate processes (MPS process rotation), each process has its own
collector and ships `SemiPDMetricsCollector.snapshot()` bytes to the controller. The aggregator
joins the two sides' records by request id and computes the window with the same code as a
single collector (`semipd.metrics.window`):

- from the prefill side: arrival, prefill start, first token, prefill end, input length (so TTFT
  and queue time are measured where the request arrived);
- from the decode side: decode start, completion, output length, success, abort, streamed-token
  times (so TPOT and ITL are measured where the tokens were produced);
- a field missing on its side is taken from the other one; a request seen on one side only is
  used as it is. A request ended on the prefill side (aborted, or done after one token) is ended.

Times must come from one clock: processes on one host share ``time.monotonic`` (`RealClock`).
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable

import numpy as np

from semipd.clock import Clock, RealClock
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.metrics.request import RequestMetrics, RequestStatus
from semipd.metrics.snapshot import decode_snapshot
from semipd.metrics.window import (
    effective_window_length,
    finished_row,
    first_token_row,
    select_window,
    summarize,
)

MetricsSource = bytes | SemiPDMetricsCollector | Iterable[RequestMetrics]

PREFILL_SIDE_FIELDS = ("arrival_time", "prefill_start_time", "first_token_time", "prefill_end_time")
DECODE_SIDE_FIELDS = ("decode_start_time", "token_times")
TERMINAL_FIELDS = ("completion_time", "output_length", "success", "aborted")


def _as_records(metrics: MetricsSource) -> list[RequestMetrics]:
    if isinstance(metrics, bytes | bytearray | memoryview):
        return decode_snapshot(bytes(metrics))
    if isinstance(metrics, SemiPDMetricsCollector):
        return decode_snapshot(metrics.snapshot())
    return list(metrics)


def merge_records(prefill: RequestMetrics | None, decode: RequestMetrics | None) -> RequestMetrics:
    """Join one request's prefill-side and decode-side records into a new record (see the module
    docstring). With one side only, a copy of that side's record."""
    if prefill is None or decode is None:
        only = prefill if prefill is not None else decode
        if only is None:
            raise ValueError("merge_records needs at least one record")
        out = copy.copy(only)
        out.handed_off = False
    else:
        out = RequestMetrics(prefill.request_id)
        for fields, first, second in ((PREFILL_SIDE_FIELDS, prefill, decode), (DECODE_SIDE_FIELDS, decode, prefill)):
            for name in fields:
                value = getattr(first, name)
                setattr(out, name, value if value is not None else getattr(second, name))
        out.input_length = prefill.input_length or decode.input_length
        ended = decode if decode.completion_time is not None else prefill
        for name in TERMINAL_FIELDS:
            setattr(out, name, getattr(ended, name))
    if out.token_times is not None:
        out.token_times = list(out.token_times)
    return out


class MetricsAggregator:
    """Merges the prefill and decode processes' records into one `AggregatedMetrics`. Thread-safe.

    Each ``update_*`` call replaces that side's records with the given snapshot: `snapshot()`
    bytes, a collector, or `RequestMetrics` records.
    """

    def __init__(self, window_size_seconds: float = 30.0, clock: Clock | None = None) -> None:
        if not window_size_seconds > 0:
            raise ValueError(f"window_size_seconds must be > 0, got {window_size_seconds}")
        self.window_size_seconds = float(window_size_seconds)
        self.clock: Clock = clock if clock is not None else RealClock()
        self._lock = threading.Lock()
        self._prefill: dict[str, RequestMetrics] = {}
        self._decode: dict[str, RequestMetrics] = {}

    def update_prefill_metrics(self, metrics: MetricsSource) -> None:
        """Replace the prefill side's records."""
        records = {r.request_id: r for r in _as_records(metrics)}
        with self._lock:
            self._prefill = records

    def update_decode_metrics(self, metrics: MetricsSource) -> None:
        """Replace the decode side's records."""
        records = {r.request_id: r for r in _as_records(metrics)}
        with self._lock:
            self._decode = records

    def merged_records(self) -> list[RequestMetrics]:
        """One joined record per request id seen on either side (prefill side's order first)."""
        with self._lock:
            prefill, decode = self._prefill, self._decode
        rids = list(prefill) + [rid for rid in decode if rid not in prefill]
        return [merge_records(prefill.get(rid), decode.get(rid)) for rid in rids]

    def get_aggregated_metrics(self) -> AggregatedMetrics:
        """The window [now - window_size_seconds, now] over the joined records."""
        records = self.merged_records()
        end = self.clock.now()
        start = end - self.window_size_seconds
        finished: list[tuple[float, ...]] = []
        first_tokens: list[tuple[float, float, float]] = []
        arrivals: list[tuple[float, float]] = []
        itl: list[tuple[float, float, float]] = []
        num_in_flight = num_waiting = 0
        for serial, rec in enumerate(records):
            if rec.arrival_time is not None:
                arrivals.append((rec.arrival_time, float(rec.input_length)))
                if rec.first_token_time is not None:
                    first_tokens.append(first_token_row(rec))
            if rec.completion_time is not None:
                status = (RequestStatus.ABORTED if rec.aborted else
                          RequestStatus.COMPLETED if rec.success else RequestStatus.FAILED)
                finished.append(finished_row(rec, rec.completion_time, status))
            else:
                num_in_flight += 1
                num_waiting += rec.first_token_time is None
            if rec.token_times:
                prev = rec.first_token_time
                for t in rec.token_times:
                    if prev is not None:
                        itl.append((t, t - prev, serial))
                    prev = t
        samples = select_window(_matrix(finished, 6), _matrix(first_tokens, 3), _matrix(arrivals, 2),
                                _matrix(itl, 3), start, end)
        first_arrival = min(t for t, _ in arrivals) if arrivals else None
        return summarize(
            samples,
            window_start=start,
            window_end=end,
            effective_length=effective_window_length(self.window_size_seconds, end, first_arrival),
            num_in_flight=num_in_flight,
            num_waiting_prefill=num_waiting,
            num_decoding=num_in_flight - num_waiting,
        )


def _matrix(rows: list[tuple[float, ...]], num_columns: int) -> np.ndarray:
    """Rows as a ``(num_columns, n)`` matrix, as `select_window` takes them."""
    if not rows:
        return np.empty((num_columns, 0), dtype=np.float64)
    return np.asarray(rows, dtype=np.float64).T
