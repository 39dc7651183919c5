"""Clocks: every time in semipd is seconds (float) read from a `Clock`.

The real engine uses `RealClock` (monotonic); the simulator and tests use
`VirtualClock`, which moves only when told to.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """Anything with a `now()` returning seconds as a float."""

    def now(self) -> float: ...


class RealClock:
    """Monotonic wall clock (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()


class VirtualClock:
    """A clock that only moves when `advance` or `set` is called. Thread-safe."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0, got {seconds}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, t: float) -> None:
        """Jump to time `t`; time never goes backwards."""
        with self._lock:
            if t < self._now:
                raise ValueError(f"t={t} is before the current time {self._now}")
            self._now = float(t)
