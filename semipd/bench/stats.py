"""Benchmark statistics: pure functions over per-request records.

Definitions follow ``vllm bench serve``: latency distributions and token totals are over
successful requests; TPOT only over requests with at least two output tokens; ITL pools the
gaps of every successful request. Goodput counts successful requests within every SLO;
SLO attainment divides that count by all sent requests, so failures count as misses.
Latencies are reported in milliseconds (names end in ``_ms``), throughputs per second.
A statistic with no samples is 0.0, as in vLLM's JSON; `MetricStats.count` tells them apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semipd.bench.goodput import meets_slos
from semipd.bench.pace import WindowStats, window_stats
from semipd.bench.records import RequestRecord
from semipd.metrics.aggregated import percentile

METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2el")
DEFAULT_PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)


def parse_percentiles(text: str) -> tuple[float, ...]:
    """``"50,90,99.9"`` -> (50.0, 90.0, 99.9); each must lie in (0, 100]."""
    values: list[float] = []
    for part in text.split(","):
        try:
            p = float(part)
        except ValueError:
            raise ValueError(f"metric-percentiles: {part.strip()!r} is not a number") from None
        if not 0.0 < p <= 100.0:
            raise ValueError(f"metric-percentiles: {p:g} is outside (0, 100]")
        values.append(p)
    return tuple(values)


def parse_metric_names(text: str) -> tuple[str, ...]:
    """``"ttft,tpot"`` -> ("ttft", "tpot"); names from `METRICS`."""
    names = tuple(name.strip().lower() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METRICS]
    if unknown or not names:
        raise ValueError(f"percentile-metrics: unknown {unknown or text!r}; choose from {', '.join(METRICS)}")
    return names


def percentile_label(p: float) -> str:
    """99 -> "p99", 99.9 -> "p99.9" (the keys vLLM writes)."""
    return f"p{int(p)}" if float(p).is_integer() else f"p{p:g}"


@dataclass(frozen=True)
class MetricStats:
    """Mean, median, standard deviation and chosen percentiles of one metric, in ms."""

    count: int
    mean: float
    median: float
    std: float
    percentiles: tuple[tuple[float, float], ...]


def metric_samples_ms(records: Sequence[RequestRecord], metric: str) -> np.ndarray:
    """The samples of `metric` (one of `METRICS`) over successful requests, in ms."""
    ok = [r for r in records if r.success]
    if metric == "ttft":
        values = [r.ttft for r in ok if r.ttft is not None]
    elif metric == "tpot":
        values = [r.tpot for r in ok if r.tpot is not None]
    elif metric == "itl":
        values = [gap for r in ok for gap in r.itls]
    elif metric == "e2el":
        values = [r.latency for r in ok if r.latency is not None]
    else:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return np.asarray(values, dtype=np.float64) * 1000.0


def describe(samples_ms: np.ndarray, percentiles: Sequence[float]) -> MetricStats:
    if samples_ms.size == 0:
        return MetricStats(0, 0.0, 0.0, 0.0, tuple((p, 0.0) for p in percentiles))
    return MetricStats(
        count=int(samples_ms.size),
        mean=float(np.mean(samples_ms)),
        median=float(np.median(samples_ms)),
        std=float(np.std(samples_ms)),
        percentiles=tuple((p, percentile(samples_ms, p)) for p in percentiles),
    )


def peak_concurrency(records: Sequence[RequestRecord]) -> int:
    """Most requests in flight at once, from send times and latencies (failures included)."""
    events: list[tuple[float, int]] = []
    for r in records:
        if r.latency is not None:
            # At equal times the end (-1) sorts before the start (+1): touching intervals do not overlap.
            events += [(r.send_time, 1), (r.send_time + r.latency, -1)]
    peak = running = 0
    for _, step in sorted(events):
        running += step
        peak = max(peak, running)
    return peak


@dataclass(frozen=True)
class BenchSummary:
    """The result of one benchmark run (see the module docstring for definitions)."""

    num_requests: int
    completed: int
    failed: int
    duration: float
    total_input_tokens: int
    total_output_tokens: int
    request_throughput: float
    output_throughput: float
    total_token_throughput: float
    peak_concurrency: int
    num_short_outputs: int
    """Successful requests that returned fewer tokens than they asked for."""
    metrics: dict[str, MetricStats]
    slos: dict[str, float] = field(default_factory=dict)
    good_requests: int | None = None
    request_goodput: float | None = None
    slo_attainment: float | None = None
    window: WindowStats | None = None
    """Throughput by arrival window and whether completions kept pace (`semipd.bench.pace`)."""

    def to_dict(self) -> dict[str, Any]:
        """Flat keys in the style of ``vllm bench serve --save-result`` (e.g. ``p99_ttft_ms``)."""
        out: dict[str, Any] = {
            "num_prompts": self.num_requests,
            "completed": self.completed,
            "failed": self.failed,
            "duration": self.duration,
            "total_input_tokens": self.total_input_tokens,
            "total_output_tokens": self.total_output_tokens,
            "request_throughput": self.request_throughput,
            "output_throughput": self.output_throughput,
            "total_token_throughput": self.total_token_throughput,
            "peak_concurrency": self.peak_concurrency,
            "num_short_outputs": self.num_short_outputs,
            "goodput_slos_ms": dict(self.slos),
            "good_requests": self.good_requests,
            "request_goodput": self.request_goodput,
            "slo_attainment": self.slo_attainment,
        }
        if self.window is not None:
            out.update(self.window.to_dict())
        for name, st in self.metrics.items():
            out[f"count_{name}"] = st.count
            out[f"mean_{name}_ms"] = st.mean
            out[f"median_{name}_ms"] = st.median
            out[f"std_{name}_ms"] = st.std
            for p, value in st.percentiles:
                out[f"{percentile_label(p)}_{name}_ms"] = value
        return out


def summarize(
    records: Sequence[RequestRecord],
    duration: float,
    slos: dict[str, float] | None = None,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    metrics: Sequence[str] = METRICS,
    arrival_window_s: float | None = None,
) -> BenchSummary:
    """Summarize a run of `records` that took `duration` seconds (first send to last reply) and whose
    requests arrived over `arrival_window_s` seconds (default: the span of their scheduled sends)."""
    if duration <= 0:
        raise ValueError(f"duration must be > 0, got {duration}")
    ok = [r for r in records if r.success]
    total_in = sum(r.input_tokens for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = sum(meets_slos(r, slos) for r in records) if slos else None
    return BenchSummary(
        num_requests=len(records),
        completed=len(ok),
        failed=len(records) - len(ok),
        duration=duration,
        total_input_tokens=total_in,
        total_output_tokens=total_out,
        request_throughput=len(ok) / duration,
        output_throughput=total_out / duration,
        total_token_throughput=(total_in + total_out) / duration,
        peak_concurrency=peak_concurrency(records),
        num_short_outputs=sum(r.output_tokens < r.requested_output_tokens for r in ok),
        metrics={name: describe(metric_samples_ms(records, name), percentiles) for name in metrics},
        slos=dict(slos or {}),
        good_requests=good,
        request_goodput=None if good is None else good / duration,
        slo_attainment=None if good is None else (good / len(records) if records else 0.0),
        window=window_stats(records, arrival_window_s),
    )
