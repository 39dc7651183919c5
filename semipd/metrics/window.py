"""Window statistics shared by the collector and the cross-process aggregator.

Both reduce requests to numeric event rows and select the rows whose time falls in the
window [start, end] (inclusive), so the two compute every metric with the same code:

- finished rows (time = completion/abort/hand-off time): status, TPOT, e2e latency, lengths;
- first-token rows (time = first token): TTFT and queue time;
- arrival rows (time = arrival): the prompt length;
- ITL rows (time = the token's time): the gap to the previous token and the request's serial.

What each statistic covers:

- TTFT and queue time: requests whose first token fell in the window, finished or not (so the
  controller sees TTFT rise before those requests complete).
- TPOT, e2e latency, request/token throughput: requests completed successfully in the window.
- ITL: tokens streamed in the window.
- Streaming TPOT: for each request that streamed at least `MIN_STREAMING_GAPS` tokens (after its
  first) in the window, the mean gap between them: TPOT as the window saw it, finished or not.
  TPOT proper is known only when a request completes, so it describes the split (and the load)
  of a whole request's life, up to a request length plus a window ago; streaming TPOT moves as
  soon as the decode step does, which is what a controller needs to see.
- Rates divide by the effective window length: the window length, or the time elapsed since
  the first arrival when that is shorter (a collector started 5 s ago has a 5 s window); 0.0
  when that length is not positive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.request import RequestMetrics, RequestStatus

NAN = math.nan
PERCENTILES = (50.0, 90.0, 95.0, 99.0)

# Column layouts of the event rows.
FINISHED_COLUMNS = ("time", "status", "tpot_s", "e2e_s", "input_length", "output_length")
FIRST_TOKEN_COLUMNS = ("time", "ttft_s", "queue_s")
ARRIVAL_COLUMNS = ("time", "input_length")
ITL_COLUMNS = ("time", "gap_s", "serial")
MIN_STREAMING_GAPS = 2
"""Token gaps a request needs in the window to give a streaming TPOT sample (one gap alone is
the noisiest: it may hold the wait for a decode step boundary after the first token)."""
_COMPLETED = RequestStatus.COMPLETED


def finished_row(rec: RequestMetrics, t: float, status: RequestStatus) -> tuple[float, ...]:
    """The finished row of `rec` ending at `t` with `status` (NaN where a value is undefined)."""
    tpot = e2e = NAN
    if status is _COMPLETED:
        if rec.first_token_time is not None and rec.output_length > 1:
            tpot = (t - rec.first_token_time) / (rec.output_length - 1)
        if rec.arrival_time is not None:
            e2e = t - rec.arrival_time
    return (t, float(status), tpot, e2e, float(rec.input_length), float(rec.output_length))


def first_token_row(rec: RequestMetrics) -> tuple[float, float, float]:
    """The first-token row of `rec` (which must have arrival and first-token times)."""
    ft = rec.first_token_time
    arrival = rec.arrival_time
    assert ft is not None and arrival is not None
    queue = rec.prefill_start_time - arrival if rec.prefill_start_time is not None else NAN
    return (ft, ft - arrival, queue)


@dataclass(frozen=True)
class WindowSamples:
    """The rows selected by one window, in seconds and tokens (copies, safe to keep)."""

    finished_status: np.ndarray
    """Status codes of every request that ended in the window."""
    tpot_s: np.ndarray
    e2e_s: np.ndarray
    input_lengths: np.ndarray
    output_lengths: np.ndarray
    """The four arrays above cover requests completed successfully in the window."""
    ttft_s: np.ndarray
    queue_s: np.ndarray
    itl_s: np.ndarray
    streaming_tpot_s: np.ndarray
    """Per request with at least `MIN_STREAMING_GAPS` token gaps in the window: their mean."""
    num_arrivals: int
    arrival_input_tokens: float
    """Prompt tokens of the requests that arrived in the window."""


def _keep(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """values[mask], without the copy-by-mask when every element is kept."""
    return values if mask.all() else values[mask]


def _rows_in_window(rows: np.ndarray, start: float, end: float) -> np.ndarray:
    """The columns of the ``(num_columns, n)`` matrix `rows` whose time (row 0) is in [start, end],
    as a new array."""
    times = rows[0]
    if times.size and start <= times.min() and times.max() <= end:
        return rows.copy()
    return rows[:, np.flatnonzero((times >= start) & (times <= end))]


def streaming_tpot(gaps: np.ndarray, serials: np.ndarray, min_gaps: int = MIN_STREAMING_GAPS) -> np.ndarray:
    """Mean gap per request (`serials` tell the requests apart) over requests with at least
    `min_gaps` gaps, in no particular order."""
    if gaps.size == 0:
        return gaps[:0].copy()
    keys = serials.astype(np.int64)
    low = int(keys.min())
    if int(keys.max()) - low > 4 * keys.size:  # sparse serials: compact them first
        _, keys = np.unique(keys, return_inverse=True)
    else:
        keys = keys - low
    counts = np.bincount(keys)
    sums = np.bincount(keys, weights=gaps)
    kept = counts >= min_gaps
    return sums[kept] / counts[kept]


def select_window(
    finished: np.ndarray,
    first_tokens: np.ndarray,
    arrivals: np.ndarray,
    itl: np.ndarray,
    start: float,
    end: float,
) -> WindowSamples:
    """Select the events in [start, end]. Each argument is a ``(num_columns, n)`` matrix whose
    rows are in `FINISHED_COLUMNS`, `FIRST_TOKEN_COLUMNS`, `ARRIVAL_COLUMNS` and `ITL_COLUMNS`
    order. The result holds copies."""
    fin = _rows_in_window(finished, start, end)
    status = fin[1]
    completed = status == float(RequestStatus.COMPLETED)
    done = fin if completed.all() else fin[:, completed]
    tpot, e2e = done[2], done[3]
    ft = _rows_in_window(first_tokens, start, end)
    queue = ft[2]
    tokens = _rows_in_window(itl, start, end)
    arrived = _rows_in_window(arrivals, start, end)
    return WindowSamples(
        finished_status=status,
        tpot_s=_keep(tpot, ~np.isnan(tpot)),
        e2e_s=_keep(e2e, ~np.isnan(e2e)),
        input_lengths=done[4],
        output_lengths=done[5],
        ttft_s=ft[1],
        queue_s=_keep(queue, ~np.isnan(queue)),
        itl_s=tokens[1],
        streaming_tpot_s=streaming_tpot(tokens[1], tokens[2]),
        num_arrivals=arrived.shape[1],
        arrival_input_tokens=float(arrived[1].sum()),
    )


def percentiles_of_sorted(values: np.ndarray, percentiles: tuple[float, ...] = PERCENTILES) -> tuple[float, ...]:
    """numpy's default ("linear") percentiles of the ascending array `values` (non-empty).

    The same arithmetic as ``np.percentile`` (virtual index (n - 1) * p / 100, then numpy's
    two-sided lerp), so the results are equal; on a sorted array it skips numpy's selection work,
    which dominates the window query for large windows.
    """
    n = values.size
    out = []
    for p in percentiles:
        v = (n - 1) * (p / 100)
        if v >= n - 1:
            out.append(float(values[n - 1]))
            continue
        i = int(v)
        t = v - i
        a, b = float(values[i]), float(values[i + 1])
        diff = b - a
        out.append(a + diff * t if t < 0.5 else b - diff * (1 - t))
    return tuple(out)


def _stats_ms(samples_s: np.ndarray) -> tuple[np.ndarray, float, tuple[float, ...]]:
    """(samples in ms sorted ascending, mean, percentiles in `PERCENTILES` order); zeros with no samples."""
    ms = samples_s * 1000.0
    if ms.size == 0:
        return ms, 0.0, (0.0,) * len(PERCENTILES)
    ms.sort()
    return ms, float(ms.mean()), percentiles_of_sorted(ms)


def summarize(
    samples: WindowSamples,
    *,
    window_start: float,
    window_end: float,
    effective_length: float,
    num_in_flight: int,
    num_waiting_prefill: int,
    num_decoding: int,
    window_truncated: bool = False,
) -> AggregatedMetrics:
    """Fill an `AggregatedMetrics` from one window's samples (see the module docstring)."""
    status = samples.finished_status
    num_completed = int(np.count_nonzero(status == float(RequestStatus.COMPLETED)))
    ttft_ms, ttft_mean, ttft_p = _stats_ms(samples.ttft_s)
    tpot_ms, tpot_mean, tpot_p = _stats_ms(samples.tpot_s)
    _, itl_mean, itl_p = _stats_ms(samples.itl_s)
    streaming_ms, _, _ = _stats_ms(samples.streaming_tpot_s)
    _, queue_mean, queue_p = _stats_ms(samples.queue_s)
    _, e2e_mean, e2e_p = _stats_ms(samples.e2e_s)
    input_tokens = float(samples.input_lengths.sum())
    output_tokens = float(samples.output_lengths.sum())
    length = effective_length if effective_length > 0 else math.inf  # rates are 0.0 with no elapsed time
    return AggregatedMetrics(
        window_start_time=window_start,
        window_end_time=window_end,
        num_completed=num_completed,
        num_failed=int(np.count_nonzero(status == float(RequestStatus.FAILED))),
        num_aborted=int(np.count_nonzero(status == float(RequestStatus.ABORTED))),
        num_in_flight=num_in_flight,
        num_waiting_prefill=num_waiting_prefill,
        num_decoding=num_decoding,
        ttft_mean=ttft_mean,
        ttft_p50=ttft_p[0],
        ttft_p90=ttft_p[1],
        ttft_p95=ttft_p[2],
        ttft_p99=ttft_p[3],
        tpot_mean=tpot_mean,
        tpot_p50=tpot_p[0],
        tpot_p90=tpot_p[1],
        tpot_p95=tpot_p[2],
        tpot_p99=tpot_p[3],
        itl_mean=itl_mean,
        itl_p50=itl_p[0],
        itl_p90=itl_p[1],
        itl_p95=itl_p[2],
        itl_p99=itl_p[3],
        queue_time_mean=queue_mean,
        queue_time_p50=queue_p[0],
        queue_time_p90=queue_p[1],
        queue_time_p95=queue_p[2],
        queue_time_p99=queue_p[3],
        e2e_latency_mean=e2e_mean,
        e2e_latency_p50=e2e_p[0],
        e2e_latency_p90=e2e_p[1],
        e2e_latency_p95=e2e_p[2],
        e2e_latency_p99=e2e_p[3],
        request_throughput=num_completed / length,
        request_arrival_rate=samples.num_arrivals / length,
        arrival_input_token_rate=samples.arrival_input_tokens / length,
        input_token_throughput=input_tokens / length,
        output_token_throughput=output_tokens / length,
        total_token_throughput=(input_tokens + output_tokens) / length,
        ttft_samples=ttft_ms,
        tpot_samples=tpot_ms,
        streaming_tpot_samples=streaming_ms,
        window_truncated=window_truncated,
    )


def effective_window_length(window_size: float, window_end: float, first_arrival: float | None) -> float:
    """min(window_size, window_end - first_arrival); 0.0 before any arrival."""
    if first_arrival is None:
        return 0.0
    return max(0.0, min(window_size, window_end - first_arrival))


def real_time_dict(agg: AggregatedMetrics, window_size: float) -> dict[str, float | int | bool]:
    """The latency/throughput part of `get_real_time_metrics()` (keys documented there)."""
    out: dict[str, float | int | bool] = {
        "timestamp": agg.window_end_time,
        "window_size_seconds": window_size,
        "window_start_time": agg.window_start_time,
    }
    for name in ("ttft", "tpot", "itl", "queue_time", "e2e_latency"):
        out[f"{name}_mean_ms"] = getattr(agg, f"{name}_mean")
        for p in ("p50", "p90", "p95", "p99"):
            out[f"{name}_{p}_ms"] = getattr(agg, f"{name}_{p}")
    for key in ("request_throughput", "request_arrival_rate", "input_token_throughput", "output_token_throughput",
                "total_token_throughput", "num_completed", "num_failed", "num_aborted", "num_in_flight",
                "num_waiting_prefill", "num_decoding", "num_ttft_samples", "num_tpot_samples", "window_truncated"):
        out[key] = getattr(agg, key)
    return out
