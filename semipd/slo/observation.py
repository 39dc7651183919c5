"""`Observation`: one metrics window read against the SLOs, the input of detection and prediction.

TTFT is measured from arrival, so it includes queueing, and a window's TTFT percentile
only moves once queued requests finally get their first token. The prefill queue is a
leading signal: by Little's law the mean time to first token is the number of requests
waiting for it over the arrival rate, ``num_waiting_prefill / request_arrival_rate``.
With the queue signal on, the effective TTFT is the larger of the percentile and this
estimate, so a growing queue raises a TTFT violation before the percentile does. The
estimate is a mean, below a high percentile in steady state, so it only dominates when
the queue is building. One instant's queue is a noisy sample at low load (one request
waiting at 0.1 req/s reads as 10 s), so the estimate is used only when at least
``queue_min_waiting`` requests wait.

TPOT is known only when a request completes, so the window's TPOT percentile describes the
splits (and the load) of whole request lives that ended up to a window ago: after a load change
or an SM move it lags by a request length plus the window. When the window has streaming TPOT
(per request, the mean gap between its tokens streamed in the window, finished or not; see
`semipd.metrics.window`) from at least ``min_samples`` requests, the effective TPOT is its
percentile; otherwise the completed requests' percentile. In steady state the two agree (both
are per-request means); after a change the streaming one moves within a decode step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.constraints import SLOConstraints


@dataclass(frozen=True)
class Observation:
    """The current window as the SLO algorithm sees it (latencies in ms)."""

    allocation: SMAllocation
    """The split the window was measured under."""
    time: float
    """End of the window, clock seconds."""
    ttft_ms: float
    """Effective TTFT: max of the percentile and the queue estimate; 0.0 when neither is known."""
    tpot_ms: float
    """Effective TPOT: the streaming TPOT percentile, else the completed requests' one; 0.0 when
    neither has ``min_samples`` samples."""
    ttft_percentile_ms: float
    """TTFT at the configured percentile; 0.0 with fewer than ``min_samples`` samples."""
    queue_ttft_ms: float
    """Little's-law estimate of the mean TTFT from the prefill queue; 0.0 when off or unknown."""
    tpot_percentile_ms: float
    """TPOT of the requests completed in the window at the configured percentile; 0.0 with fewer
    than ``min_samples`` samples."""
    streaming_tpot_ms: float
    """Streaming TPOT at the configured percentile; 0.0 with fewer than ``min_samples`` samples."""
    ttft_target_ms: float
    tpot_target_ms: float
    request_throughput: float
    """Completed requests per second in the window."""
    arrival_rate: float
    """Arrived requests per second in the window."""
    num_waiting_prefill: int
    num_ttft_samples: int
    num_tpot_samples: int
    """Samples behind `tpot_ms`: streaming ones when it is the streaming percentile, else completed ones."""
    metrics: AggregatedMetrics = field(repr=False, compare=False)
    """The window itself (profile-based predictors read it)."""
    ttft_percentile: float = 95.0
    """The percentile of TTFT held to its target (`SLOConstraints.ttft_percentile`)."""
    tpot_percentile: float = 95.0
    """The percentile of TPOT held to its target (`SLOConstraints.tpot_percentile`)."""

    @classmethod
    def from_metrics(cls, metrics: AggregatedMetrics, allocation: SMAllocation, slo: SLOConstraints,
                     min_samples: int = 1, queue_min_waiting: int | None = None) -> Observation:
        """Read `metrics` at the configured percentiles; SLOs with too few samples read 0.0.

        `queue_min_waiting`: the queue estimate counts from this many waiting requests; None: never.
        """
        ttft_pct = metrics.ttft_percentile(slo.ttft_percentile) if metrics.num_ttft_samples >= min_samples else 0.0
        tpot_pct = metrics.tpot_percentile(slo.tpot_percentile) if metrics.num_tpot_samples >= min_samples else 0.0
        num_streaming = metrics.num_streaming_tpot_samples
        streaming = metrics.streaming_tpot_percentile(slo.tpot_percentile) if num_streaming >= min_samples else 0.0
        queue_ttft = 0.0
        if (queue_min_waiting is not None and metrics.num_waiting_prefill >= queue_min_waiting
                and metrics.request_arrival_rate > 0):
            queue_ttft = 1000.0 * metrics.num_waiting_prefill / metrics.request_arrival_rate
        return cls(
            allocation=allocation,
            time=metrics.window_end_time,
            ttft_ms=max(ttft_pct, queue_ttft),
            tpot_ms=streaming if streaming > 0 else tpot_pct,
            ttft_percentile_ms=ttft_pct,
            queue_ttft_ms=queue_ttft,
            tpot_percentile_ms=tpot_pct,
            streaming_tpot_ms=streaming,
            ttft_target_ms=slo.ttft_target_ms,
            tpot_target_ms=slo.tpot_target_ms,
            request_throughput=metrics.request_throughput,
            arrival_rate=metrics.request_arrival_rate,
            num_waiting_prefill=metrics.num_waiting_prefill,
            num_ttft_samples=metrics.num_ttft_samples,
            num_tpot_samples=num_streaming if streaming > 0 else metrics.num_tpot_samples,
            metrics=metrics,
            ttft_percentile=slo.ttft_percentile,
            tpot_percentile=slo.tpot_percentile,
        )

    @property
    def base_ttft_ms(self) -> float:
        """Observed TTFT, or the target when unknown (the seed's base for predictions)."""
        return self.ttft_ms if self.ttft_ms > 0 else self.ttft_target_ms

    @property
    def base_tpot_ms(self) -> float:
        """Observed TPOT, or the target when unknown (the seed's base for predictions)."""
        return self.tpot_ms if self.tpot_ms > 0 else self.tpot_target_ms

    def summary(self) -> dict[str, float | int]:
        """The figures a decision log keeps."""
        return {
            "ttft_ms": self.ttft_ms,
            "ttft_percentile_ms": self.ttft_percentile_ms,
            "queue_ttft_ms": self.queue_ttft_ms,
            "tpot_ms": self.tpot_ms,
            "tpot_percentile_ms": self.tpot_percentile_ms,
            "streaming_tpot_ms": self.streaming_tpot_ms,
            "request_throughput": self.request_throughput,
            "arrival_rate": self.arrival_rate,
            "num_waiting_prefill": self.num_waiting_prefill,
            "num_ttft_samples": self.num_ttft_samples,
            "num_tpot_samples": self.num_tpot_samples,
        }
