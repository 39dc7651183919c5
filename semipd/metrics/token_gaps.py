"""`TokenGaps`: the gaps between streamed tokens, as the window statistics read them.

Each gap is a row (time of the token, gap to the request's previous token, the request's
serial) in an `EventRing`. Rows are first appended to plain lists and written to the ring in
bulk, every `FLUSH` rows and before every read: a decode step of the simulator gives hundreds
of tokens at once, and one numpy write per thousands of rows costs far less than one per row.
Not thread-safe: the collector guards it with its own lock.
"""

from __future__ import annotations

import numpy as np

from semipd.metrics.ring import EventRing

FLUSH = 4096
"""Buffered rows that trigger a write to the ring."""


class TokenGaps:
    """Up to `capacity` token gaps (the oldest dropped first)."""

    __slots__ = ("ring", "times", "gaps", "serials")

    def __init__(self, capacity: int) -> None:
        self.ring = EventRing(capacity, 3)
        self.times: list[float] = []
        self.gaps: list[float] = []
        self.serials: list[int] = []

    def add(self, t: float, gap: float, serial: int) -> None:
        """One token at `t`, `gap` seconds after the previous one of request `serial`."""
        self.times.append(t)
        self.gaps.append(gap)
        self.serials.append(serial)
        if len(self.gaps) >= FLUSH:
            self.flush()

    def add_step(self, t: float, gaps: list[float], serials: list[int]) -> None:
        """Tokens of one decode step, all at `t`: their gaps and their requests' serials."""
        self.times.extend([t] * len(gaps))
        self.gaps.extend(gaps)
        self.serials.extend(serials)
        if len(self.gaps) >= FLUSH:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows to the ring."""
        if self.gaps:
            self.ring.push_many(np.array((self.times, self.gaps, self.serials), dtype=np.float64))
            self.times.clear()
            self.gaps.clear()
            self.serials.clear()

    def view(self) -> np.ndarray:
        """The ``(3, n)`` rows kept (a view, see `EventRing.view`), buffered ones included."""
        self.flush()
        return self.ring.view()

    def between(self, start: float, end: float) -> np.ndarray:
        """A copy of the rows with time in [start, end], buffered ones included (by binary search
        when the tokens came in time order, as a simulator's do)."""
        self.flush()
        return self.ring.between(start, end)

    def covers(self, start: float) -> bool:
        """True when no gap at or after `start` has been dropped."""
        return self.ring.covers(start)
