"""`WindowReader`: the controller's view of the metrics window, without samples that are stale.

A sliding window answers "what happened in the last 30 s". After an SM move, or after the
load changes (a burst of long prompts, a switch from chat to long-form generation), part of
that is history: samples of a split no longer in force, or of a load no longer offered.
Acting on them judges the present by the past - the controller under-reacts to the change,
then over-corrects once the window finally turns over.

With a source whose ``get_current_window_metrics`` takes ``since`` (the collector does), the
reader returns the window since the latest of two moments, when there was one in the window:

- the last switch (`mark_switch`, which the controller calls after a move and while the
  resource manager still reports the switch pending);
- the last load shift: every cycle, the most recent ``horizon`` seconds are compared with the
  part of the window before them; when the arrival rate or the mean prompt length differs by
  ``shift_ratio`` or more (either way), with at least ``min_arrivals`` arrivals on each side,
  the load shifted at the start of the horizon. Prompt lengths are known at arrival, so a
  shift shows within a horizon, long before the requests of the new load complete. A 2x
  threshold keeps Poisson noise (a 10 s horizon at 5 req/s holds ~50 arrivals, ~15% noise)
  from reading as a shift; a false one only shortens the window for a while.

Times given to the reader are the controller's clock; the source may run on another clock,
so ``since`` is passed as the source's window end minus the elapsed controller time.
Any other source gets the plain window (`fresh_from` tells the controller nothing is known).
"""

from __future__ import annotations

import inspect
from typing import Any

from semipd.metrics.aggregated import AggregatedMetrics


def takes_since(source: Any) -> bool:
    """Whether ``source.get_current_window_metrics`` accepts ``since``."""
    try:
        return "since" in inspect.signature(source.get_current_window_metrics).parameters
    except (TypeError, ValueError):  # no introspectable signature (a C callable, say)
        return False


def load_shifted(recent: AggregatedMetrics, whole: AggregatedMetrics, ratio: float, min_arrivals: int) -> bool:
    """Whether `recent` (the end of `whole`) saw another load than the rest of `whole`: arrival rate
    or mean prompt length `ratio` times higher or lower, with `min_arrivals` arrivals on each side."""
    span_recent = recent.window_end_time - recent.window_start_time
    span_older = (whole.window_end_time - whole.window_start_time) - span_recent
    if span_recent <= 0 or span_older <= 0:
        return False
    arrivals_recent = recent.request_arrival_rate * span_recent
    arrivals_older = whole.request_arrival_rate * (span_older + span_recent) - arrivals_recent
    if min(arrivals_recent, arrivals_older) < min_arrivals:
        return False
    tokens_recent = recent.arrival_input_token_rate * span_recent
    tokens_older = whole.arrival_input_token_rate * (span_older + span_recent) - tokens_recent
    rates = (arrivals_recent / span_recent, arrivals_older / span_older)
    lengths = (tokens_recent / arrivals_recent, tokens_older / arrivals_older)
    return any(min(pair) > 0 and max(pair) / min(pair) >= ratio for pair in (rates, lengths))


class WindowReader:
    """Reads a metrics source's window from the last switch or load shift on (see the module docstring)."""

    def __init__(self, source: Any, horizon: float, shift_ratio: float | None = 2.0, min_arrivals: int = 10) -> None:
        if not horizon > 0:
            raise ValueError(f"horizon must be > 0, got {horizon!r}")
        if shift_ratio is not None and not shift_ratio > 1:
            raise ValueError(f"shift_ratio must be None or > 1, got {shift_ratio!r}")
        self.source = source
        self.horizon = float(horizon)
        self.shift_ratio = shift_ratio
        self.min_arrivals = min_arrivals
        self.supports_since = takes_since(source)
        self.fresh_from: float | None = None
        """Controller time from which the samples read describe the current split and load (None: the
        whole window does, as far as is known)."""
        self.shift_at: float | None = None
        """When the last load shift was detected (controller time)."""

    def mark_switch(self, now: float) -> None:
        """A new split is in force from `now` on."""
        self.fresh_from = now

    def read(self, now: float) -> AggregatedMetrics:
        """The window at controller time `now`, from `fresh_from` on when the source allows."""
        source = self.source
        whole = source.get_current_window_metrics()
        if not self.supports_since:
            return whole
        offset = whole.window_end_time - now  # source clock minus controller clock
        if self.fresh_from is not None and self.fresh_from <= now - (whole.window_end_time - whole.window_start_time):
            self.fresh_from = None  # the whole window is younger than the switch or shift
        fresh = whole if self.fresh_from is None else source.get_current_window_metrics(since=self.fresh_from + offset)
        recent_start = now - self.horizon
        if self.shift_ratio is None or (self.fresh_from is not None and self.fresh_from >= recent_start):
            return fresh
        recent = source.get_current_window_metrics(since=recent_start + offset)
        if load_shifted(recent, fresh, self.shift_ratio, self.min_arrivals):
            self.fresh_from = self.shift_at = recent_start
            return recent
        return fresh
