"""`BucketedGraphs`: what the decode graphs (`GraphRunner`) and the piecewise graphs
(`PiecewiseGraphs`) share: size buckets, graph sets keyed by the stream they were captured on
(a graph keeps that stream's SMs), and the capture time so far."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any


class BucketedGraphs:
    """Graphs by (key, bucket); a work item of size ``n`` runs in the smallest bucket ``>= n``."""

    too_large = "{n} exceeds the largest graph ({largest})"
    """The error of `bucket_for` for a size past the largest bucket (``n``, ``largest``)."""
    graphs_per_bucket = 1
    """Graphs captured per bucket and key."""

    def __init__(self, buckets: list[int]) -> None:
        self.buckets = buckets
        self._graphs: dict[tuple[Hashable, int], Any] = {}
        self.capture_seconds = 0.0

    @property
    def keys(self) -> list[Hashable]:
        """The keys captured so far."""
        return sorted({k for k, _ in self._graphs}, key=repr)

    @property
    def graphs_per_set(self) -> int:
        """Graphs one `capture` adds."""
        return len(self.buckets) * self.graphs_per_bucket

    def is_captured(self, key: Hashable = "default") -> bool:
        return (key, self.buckets[-1]) in self._graphs

    def can_run(self, n: int) -> bool:
        return n <= self.buckets[-1]

    def bucket_for(self, n: int) -> int:
        for b in self.buckets:
            if b >= n:
                return b
        raise ValueError(self.too_large.format(n=n, largest=self.buckets[-1]))
