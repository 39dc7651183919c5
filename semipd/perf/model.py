"""`PerfModel`: how long GPU work takes on a number of SMs, and the helpers its implementations share.

A `PerfModel` answers how long one prefill iteration, one decode step, or one mixed
(unified) batch takes on a number of SMs, how much the two phases slow each other down
when they run side by side, and how many KV tokens fit in memory. Step times include the
host's share of a step (building inputs, launching, reading back the sampled tokens) that
does not overlap the device's work: `host_overhead_s` says how much of a step that is.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np

Chunks = Sequence[tuple[int, int]]
"""Prefill chunks: (new_tokens, context_len_after) per sequence."""

PHASES = ("prefill", "decode")


class PerfModel(ABC):
    """Execution times of one GPU + model. Times are seconds, running alone unless stated."""

    name: str
    total_sms: int

    @abstractmethod
    def prefill_time(self, chunks: Chunks, sms: int) -> float:
        """One prefill iteration: `chunks` are (new_tokens, context_len_after) per sequence."""

    @abstractmethod
    def decode_time(self, batch_size: int, total_kv_tokens: int, sms: int) -> float:
        """One decode step of `batch_size` sequences holding `total_kv_tokens` KV tokens in all."""

    @abstractmethod
    def mixed_time(self, chunks: Chunks, batch_size: int, total_kv_tokens: int) -> float:
        """One mixed batch (prefill chunks + decode sequences) on the whole GPU (unified baseline)."""

    @abstractmethod
    def interference(self, prefill_sms: int, decode_sms: int) -> tuple[float, float]:
        """(prefill slowdown, decode slowdown), both >= 1, when the phases run at the same time."""

    @abstractmethod
    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        """Tokens of KV cache that fit in the memory left after weights and activations."""

    @abstractmethod
    def host_overhead_s(self, phase: str) -> float:
        """Seconds of each `phase` ("prefill" or "decode") step spent on the host, serial with the device
        (already included in the step times above)."""

    def check_sms(self, sms: int) -> None:
        """ValueError unless 1 <= `sms` <= `total_sms`."""
        if not 1 <= sms <= self.total_sms:
            raise ValueError(f"sms must be in [1, {self.total_sms}], got {sms}")


def interp_table(table: Sequence[tuple[int, float]], x: float) -> float:
    """Piecewise-linear in `x` over (x, value) pairs, flat beyond the ends, never below 1 (a slowdown)."""
    xs = [float(s) for s, _ in table]
    ys = [float(f) for _, f in table]
    return max(1.0, float(np.interp(x, xs, ys)))


def kv_capacity(memory_bytes: float, utilization: float, weight_bytes: float, reserve_bytes: float,
                kv_bytes_per_token: float) -> int:
    """KV tokens that fit in `memory_bytes * utilization` after the weights and the reserve."""
    if not 0 < utilization <= 1 or not math.isfinite(utilization):
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")
    free = memory_bytes * utilization - weight_bytes - reserve_bytes
    if free <= 0:
        raise ValueError(f"gpu_memory_utilization={utilization} leaves no memory for the KV cache")
    return int(free // kv_bytes_per_token)


def check_decode(batch_size: int, total_kv_tokens: int) -> None:
    """ValueError for a negative batch or KV token count."""
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0, got {batch_size}")
    if total_kv_tokens < 0:
        raise ValueError(f"total_kv_tokens must be >= 0, got {total_kv_tokens}")


def check_chunk(new_tokens: int, context_len_after: int) -> int:
    """`new_tokens`, after checking that the chunk is well formed."""
    if new_tokens < 1 or context_len_after < new_tokens:
        raise ValueError(f"chunks: need new_tokens >= 1 and context_len_after >= new_tokens, "
                         f"got {(new_tokens, context_len_after)}")
    return new_tokens


def check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
