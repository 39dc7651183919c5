"""Request-rate sweep: one run per rate, SLO attainment and goodput against rate, and the
highest rate that still meets the attainment target (the server's SLO capacity).

Every rate replays the same seeded draws: with a fixed number of prompts the same requests
are sent at each rate, and gamma gaps scale as 1/rate, so a higher rate is the same arrival
pattern compressed in time (common random numbers keep the curve smooth).

Each point keeps its requests' records and the server's status before it (``semipd simulate
--replay`` replays them). The sweep stops after a rate whose run stopped early (fail-fast,
Ctrl-C) or whose every request failed: the higher rates would fare no better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from semipd.bench.client import Endpoint
from semipd.bench.datasets import BenchRequest
from semipd.bench.failures import group_failures
from semipd.bench.pace import PACE_THRESHOLD
from semipd.bench.records import RequestRecord
from semipd.bench.runner import RunConfig, arrival_rng, run_benchmark
from semipd.bench.stats import BenchSummary, percentile_label, summarize
from semipd.workload import gamma_arrivals


def parse_rates(text: str) -> tuple[float, ...]:
    """``"2,4,8"`` -> (2.0, 4.0, 8.0), ascending; each a finite number > 0, no repeats."""
    rates: list[float] = []
    for part in text.split(","):
        try:
            rate = float(part)
        except ValueError:
            raise ValueError(f"request-rates: {part.strip()!r} is not a number") from None
        if not rate > 0 or not math.isfinite(rate):
            raise ValueError(f"request-rates: each rate must be a finite number > 0, got {part.strip()!r}")
        rates.append(rate)
    if len(set(rates)) != len(rates):
        raise ValueError(f"request-rates: {text!r} repeats a rate")
    return tuple(sorted(rates))


@dataclass(frozen=True)
class SweepPoint:
    """One rate's result; `errors` counts failed requests per cause (keyed by its first message)."""

    rate: float
    summary: BenchSummary
    errors: dict[str, int]
    records: tuple[RequestRecord, ...] = ()
    server_status: dict[str, Any] | None = None
    """The server's ``/semipd/status`` before this rate, when it is ours."""
    stopped: str = ""
    """Why this rate's run stopped early ('' when it did not)."""

    @property
    def all_failed(self) -> bool:
        return self.summary.num_requests > 0 and self.summary.completed == 0

    def to_dict(self) -> dict[str, Any]:
        return {"request_rate": self.rate, **self.summary.to_dict(), "errors": dict(self.errors),
                "stopped": self.stopped, "server_status": self.server_status,
                "requests": [r.to_dict() for r in self.records]}


@dataclass(frozen=True)
class Capacity:
    """The highest swept rate whose attainment, and that of every lower rate, meets the target;
    `interpolated_rate` estimates where attainment crosses the target between that rate and
    the next (equal to `highest_rate` when every rate met it: the capacity is at least that)."""

    highest_rate: float | None
    interpolated_rate: float | None
    all_met: bool


def find_capacity(points: Sequence[SweepPoint], target: float) -> Capacity:
    """Capacity of ascending-rate `points` at an attainment `target` in (0, 1]. A rate is held when
    its attainment meets the target and its completions kept pace with its arrivals
    (`semipd.bench.pace`); a rate that fell behind counts as attainment 0 for the interpolation."""
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")
    previous: SweepPoint | None = None
    for point in points:
        attained = point.summary.slo_attainment
        if attained is None:
            raise ValueError("sweep points need SLOs (slo_attainment is None)")
        window = point.summary.window
        if window is not None and not window.keeps_pace:
            attained = 0.0
        if attained < target:
            if previous is None:
                return Capacity(None, None, False)
            a0, a1 = previous.summary.slo_attainment or 0.0, attained
            r0, r1 = previous.rate, point.rate
            return Capacity(r0, r0 + (a0 - target) * (r1 - r0) / (a0 - a1), False)
        previous = point
    return Capacity(previous.rate if previous else None, previous.rate if previous else None, previous is not None)


def run_sweep(
    endpoint: Endpoint,
    rates: Sequence[float],
    build_requests: Callable[[int], list[BenchRequest]],
    slos: dict[str, float],
    config: RunConfig,
    *,
    seed: int = 0,
    burstiness: float = 1.0,
    num_prompts: int | None = None,
    duration_per_rate: float | None = None,
    percentiles: Sequence[float] = (50.0, 90.0, 99.0),
    on_point: Callable[[SweepPoint], None] | None = None,
    server_status: Callable[[], dict[str, Any] | None] | None = None,
) -> list[SweepPoint]:
    """Run each rate for `num_prompts` requests or `duration_per_rate` seconds of arrivals,
    stopping early as the module docstring says.

    `build_requests(n)` makes n requests (called once for a fixed count, once per rate for
    a duration). `on_point` is called after each rate, e.g. to print progress;
    `server_status()` before each, for the point's record.
    """
    if not slos:
        raise ValueError("slos must not be empty: attainment needs targets (--goodput ttft:MS tpot:MS)")
    if (num_prompts is None) == (duration_per_rate is None):
        raise ValueError("give exactly one of num_prompts and duration_per_rate")
    fixed = build_requests(num_prompts) if num_prompts is not None else None
    points = []
    for rate in rates:
        rng = arrival_rng(seed)
        if fixed is not None:
            requests = fixed
            arrivals = gamma_arrivals(rate, burstiness, rng, num_requests=len(fixed))
        else:
            arrivals = gamma_arrivals(rate, burstiness, rng, duration=duration_per_rate)
            requests = build_requests(len(arrivals))
        status = server_status() if server_status is not None else None
        result = run_benchmark(endpoint, requests, arrivals, config)
        summary = summarize(result.records, result.duration, slos, percentiles, arrival_window_s=duration_per_rate)
        errors = {g.example: g.count for g in group_failures(r.error for r in result.records if not r.success)}
        point = SweepPoint(rate, summary, errors, result.records, status, result.stopped)
        points.append(point)
        if on_point is not None:
            on_point(point)
        if point.stopped or point.all_failed:
            break
    return points


def format_sweep_table(points: Sequence[SweepPoint]) -> str:
    """One row per rate: counts, throughput, goodput, attainment, TTFT and TPOT percentiles (ms)."""
    if not points:
        return ""
    pcts = [p for p, _ in points[0].summary.metrics["ttft"].percentiles]
    header = ["rate", "sent", "failed", "req/s", "win_req/s", "pace", "goodput", "attain"]
    header += [f"TTFT {percentile_label(p)}" for p in pcts] + [f"TPOT {percentile_label(p)}" for p in pcts]
    rows = [header]
    for pt in points:
        s = pt.summary
        w = s.window
        pace = "-" if w is None or w.late_completion_ratio is None else f"{w.late_completion_ratio:.2f}"
        row = [f"{pt.rate:g}", str(s.num_requests), str(s.failed), f"{s.request_throughput:.2f}",
               "-" if w is None else f"{w.window_request_throughput:.2f}", pace,
               f"{s.request_goodput or 0.0:.2f}", f"{s.slo_attainment or 0.0:.3f}"]
        row += [f"{v:.1f}" for _, v in s.metrics["ttft"].percentiles]
        row += [f"{v:.2f}" for _, v in s.metrics["tpot"].percentiles]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines) + ("\n(TTFT and TPOT in ms; win_req/s: requests that arrived in the rate's window "
                               f"and completed, over the window; pace: completions / arrivals over the window's "
                               f"second half, a rate is held only at >= {PACE_THRESHOLD})")


def format_capacity(capacity: Capacity, target: float, slos: dict[str, float]) -> str:
    slo_text = " ".join(f"{k}:{v:g}" for k, v in slos.items())
    if capacity.highest_rate is None:
        return f"No swept rate reached {target:.0%} SLO attainment ({slo_text} ms); try lower rates."
    if capacity.all_met:
        return (
            f"Every swept rate met {target:.0%} SLO attainment ({slo_text} ms): capacity is at least "
            f"{capacity.highest_rate:g} req/s; try higher rates."
        )
    return (
        f"Highest rate with at least {target:.0%} SLO attainment ({slo_text} ms): {capacity.highest_rate:g} req/s "
        f"(interpolated crossing: {capacity.interpolated_rate:.2f} req/s)"
    )
