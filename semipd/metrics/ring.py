"""`EventRing`: a fixed-capacity ring of numeric event rows.

Rows live in one preallocated ``(num_columns, capacity)`` float64 array (column-major, so each
column is contiguous for the window masks): a push writes one row (one numpy assignment, no
allocation) and a reader takes views without copying. Column 0 is the event time. Once full, a
push overwrites the oldest row; the ring counts those evictions and remembers the latest evicted
time, so a reader can tell whether the retained rows still cover a window (`covers`).
A ring written only with `push_many` knows whether its rows came in time order (`ordered`);
`between` then finds a window's rows by binary search instead of scanning the whole ring.
Not thread-safe: the collector guards its rings with its own lock.
"""

from __future__ import annotations

import numpy as np


class EventRing:
    """`capacity` rows of `num_columns` floats; rows are unordered once the ring wrapped."""

    __slots__ = ("capacity", "data", "size", "next_index", "evicted", "evicted_max_time", "ordered")

    def __init__(self, capacity: int, num_columns: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if num_columns < 1:
            raise ValueError(f"num_columns must be >= 1, got {num_columns}")
        self.capacity = capacity
        self.data = np.zeros((num_columns, capacity), dtype=np.float64)
        self.size = 0
        self.next_index = 0
        self.evicted = 0
        self.evicted_max_time = float("-inf")
        self.ordered = True
        """True while every row was written by `push_many` in time order."""

    def claim(self) -> int:
        """Reserve the slot for the next row and return its index; the caller writes the row
        (``ring.data[:, i] = row``). Split from the write so hot paths can skip a method call."""
        i = self.next_index
        self.ordered = False  # the caller writes the row: its time is not seen here
        if self.size == self.capacity:
            old = float(self.data[0, i])
            if old > self.evicted_max_time:
                self.evicted_max_time = old
            self.evicted += 1
        else:
            self.size += 1
        self.next_index = i + 1 if i + 1 < self.capacity else 0
        return i

    def push(self, row: tuple[float, ...]) -> int:
        """Write one row (one value per column) and return its slot index."""
        i = self.claim()
        self.data[:, i] = row
        return i

    def push_many(self, rows: np.ndarray) -> None:
        """Write the columns of the ``(num_columns, k)`` array `rows` as k rows, oldest first
        (bulk form of `push`: one numpy assignment per contiguous stretch of the ring)."""
        k = rows.shape[1]
        cap = self.capacity
        if k == 0:
            return
        if self.ordered:
            times = rows[0]
            after_last = self.size == 0 or times[0] >= self.data[0, self.next_index - 1]
            self.ordered = bool(after_last and (k == 1 or (times[1:] >= times[:-1]).all()))
        if k > cap:  # only the newest `capacity` rows survive
            self.evicted += k - cap
            self.evicted_max_time = max(self.evicted_max_time, float(rows[0, :k - cap].max()))
            self.next_index = (self.next_index + k - cap) % cap
            rows, k = rows[:, k - cap:], cap
        i = self.next_index
        end = i + k
        times = self.data[0]
        for a, b in ((i, min(end, cap)), (0, end - cap)):  # the slots written, wrapping at the end
            b = min(b, self.size)  # filled ones lose their row
            if b > a:
                self.evicted += b - a
                self.evicted_max_time = max(self.evicted_max_time, float(times[a:b].max()))
        first = min(k, cap - i)
        self.data[:, i:i + first] = rows[:, :first]
        if first < k:
            self.data[:, :k - first] = rows[:, first:]
        self.size = min(cap, self.size + k)
        self.next_index = (i + k) % cap

    def between(self, start: float, end: float) -> np.ndarray:
        """A copy of the rows whose time is in [start, end], as ``(num_columns, n)``."""
        rows = self.view()
        if not self.ordered:
            times = rows[0]
            return rows[:, np.flatnonzero((times >= start) & (times <= end))]
        # Time order: the oldest row at next_index (once wrapped), the newest just before it.
        i = self.next_index if self.size == self.capacity else 0
        parts = [rows[:, i:], rows[:, :i]] if i else [rows]
        kept = []
        for part in parts:
            times = part[0]
            lo, hi = np.searchsorted(times, start, "left"), np.searchsorted(times, end, "right")
            if hi > lo:
                kept.append(part[:, lo:hi])
        return np.concatenate(kept, axis=1) if kept else rows[:, :0].copy()

    def view(self) -> np.ndarray:
        """A ``(num_columns, size)`` view (no copy) of the filled rows; it changes on later pushes."""
        return self.data[:, : self.size]

    def covers(self, start: float) -> bool:
        """True when no row with time >= `start` has been evicted."""
        return self.evicted_max_time < start
