"""`AggregatedMetrics`: one sliding window's statistics, as the controller reads them.

Latencies are in milliseconds (the seed's convention for this object); throughputs per
second. A percentile with no samples is 0.0 (the seed tests ``> 0`` before using one).
Arbitrary percentiles are available through `ttft_percentile(p)` / `tpot_percentile(p)` /
`streaming_tpot_percentile(p)` so the SLO algorithm can use the percentile the user configured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def percentile(values: np.ndarray, p: float) -> float:
    """Linear-interpolated percentile (numpy's default); 0.0 for no samples."""
    if values.size == 0:
        return 0.0
    return float(np.percentile(values, p))


@dataclass
class AggregatedMetrics:
    """Statistics over the window [window_start_time, window_end_time] (clock seconds)."""

    window_start_time: float = 0.0
    window_end_time: float = 0.0
    # Counts of requests that ended inside the window, and those still in flight now.
    num_completed: int = 0
    num_failed: int = 0
    num_aborted: int = 0
    num_in_flight: int = 0
    num_waiting_prefill: int = 0
    """In flight and without a first token yet (the prefill queue the controller must see)."""
    num_decoding: int = 0
    """In flight with a first token (decode is running them)."""
    # Latency statistics (ms). TTFT and queue time: requests whose first token fell in the
    # window (finished or not); ITL: tokens streamed in the window; TPOT and e2e: requests
    # completed successfully in the window (see `semipd.metrics.window`).
    ttft_mean: float = 0.0
    ttft_p50: float = 0.0
    ttft_p90: float = 0.0
    ttft_p95: float = 0.0
    ttft_p99: float = 0.0
    tpot_mean: float = 0.0
    tpot_p50: float = 0.0
    tpot_p90: float = 0.0
    tpot_p95: float = 0.0
    tpot_p99: float = 0.0
    itl_mean: float = 0.0
    itl_p50: float = 0.0
    itl_p90: float = 0.0
    itl_p95: float = 0.0
    itl_p99: float = 0.0
    queue_time_mean: float = 0.0
    queue_time_p50: float = 0.0
    queue_time_p90: float = 0.0
    queue_time_p95: float = 0.0
    queue_time_p99: float = 0.0
    e2e_latency_mean: float = 0.0
    e2e_latency_p50: float = 0.0
    e2e_latency_p90: float = 0.0
    e2e_latency_p95: float = 0.0
    e2e_latency_p99: float = 0.0
    # Throughputs over the window length.
    request_throughput: float = 0.0
    """Completed requests per second (divided by the window length, or by the time since the
    first arrival when that is shorter)."""
    request_arrival_rate: float = 0.0
    """Arrived requests per second (the paper's lambda)."""
    arrival_input_token_rate: float = 0.0
    """Prompt tokens of the arrived requests per second (the prefill demand; known at arrival,
    unlike the completed requests' lengths)."""
    input_token_throughput: float = 0.0
    output_token_throughput: float = 0.0
    total_token_throughput: float = 0.0
    # Raw samples (ms) for arbitrary percentiles; TTFT includes requests that got a
    # first token in the window even if not completed yet.
    ttft_samples: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    tpot_samples: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    streaming_tpot_samples: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False)
    """Streaming TPOT (ms): per request that streamed tokens in the window, finished or not, the
    mean gap between them (see `semipd.metrics.window`). Leads TPOT, which is known only at completion."""
    window_truncated: bool = False
    """True when bounded history dropped events that fell inside the window: counts, rates and
    percentiles then cover only the most recent part of it (raise ``max_history_size``)."""

    @property
    def num_ttft_samples(self) -> int:
        return int(self.ttft_samples.size)

    @property
    def num_tpot_samples(self) -> int:
        return int(self.tpot_samples.size)

    @property
    def num_streaming_tpot_samples(self) -> int:
        return int(self.streaming_tpot_samples.size)

    def ttft_percentile(self, p: float) -> float:
        """TTFT percentile `p` in (0, 100], ms; 0.0 with no samples."""
        return percentile(self.ttft_samples, p)

    def tpot_percentile(self, p: float) -> float:
        """TPOT percentile `p` in (0, 100], ms; 0.0 with no samples."""
        return percentile(self.tpot_samples, p)

    def streaming_tpot_percentile(self, p: float) -> float:
        """Streaming TPOT percentile `p` in (0, 100], ms; 0.0 with no samples."""
        return percentile(self.streaming_tpot_samples, p)
