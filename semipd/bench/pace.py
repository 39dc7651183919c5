"""Throughput counted by arrival window, and whether completions keep pace with arrivals.

`request_throughput` of a run divides by its whole span, first send to last reply, which
includes the drain of the last long answers and so understates what the server sustains. Here
the run's *arrival window* is the span of its scheduled send times (``W``):

- ``window_request_throughput``: requests that arrived in the window and completed, over ``W``;
  ``window_output_throughput`` likewise for their output tokens;
- ``late_completion_ratio``: requests completed during the second half of the window over requests
  that arrived in it. A server that keeps up completes about as many as arrive (ratio near 1, Poisson
  noise aside); an overloaded one falls behind and its queue grows (ratio below 1);
- ``keeps_pace``: the ratio is at least `PACE_THRESHOLD`. A sweep counts a rate as held only when
  it keeps pace *and* meets the attainment target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from semipd.bench.records import RequestRecord

PACE_THRESHOLD = 0.9
"""Least late_completion_ratio of a rate that counts as held."""


@dataclass(frozen=True)
class WindowStats:
    window_s: float
    window_request_throughput: float
    window_output_throughput: float
    late_completion_ratio: float | None
    """None when no request arrived in the second half of the window."""
    keeps_pace: bool

    def to_dict(self) -> dict[str, Any]:
        return {"arrival_window_s": self.window_s, "window_request_throughput": self.window_request_throughput,
                "window_output_throughput": self.window_output_throughput,
                "late_completion_ratio": self.late_completion_ratio, "keeps_pace": self.keeps_pace}


def window_stats(records: Sequence[RequestRecord], window_s: float | None = None) -> WindowStats | None:
    """`WindowStats` of `records` over an arrival window of `window_s` seconds from the run's start
    (default: up to the last scheduled send); None for an empty run or a zero-length window."""
    if not records:
        return None
    window = max(r.scheduled_time for r in records) if window_s is None else window_s
    if window <= 0:
        return None
    arrived = [r for r in records if r.send_time <= window]
    done = [r for r in arrived if r.success and r.latency is not None]
    half = window / 2
    late_arrivals = sum(1 for r in arrived if r.send_time > half)
    late_done = sum(1 for r in records if r.success and r.latency is not None
                    and half < r.send_time + r.latency <= window)
    ratio = late_done / late_arrivals if late_arrivals else None
    return WindowStats(window, len(done) / window, sum(r.output_tokens for r in done) / window, ratio,
                       ratio is None or ratio >= PACE_THRESHOLD)
