"""Per-request lifecycle record (`RequestMetrics`) and the engine's state snapshot (`SystemMetrics`).

Times are clock seconds (see `semipd.clock`); properties ending in ``_ms`` are milliseconds.
A timestamp of ``0.0`` is a valid time (a `VirtualClock` starts there): "not recorded" is ``None``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class RequestStatus(IntEnum):
    """Where a request's life in one collector ended. The values are stored in numeric ring buffers."""

    IN_FLIGHT = 0
    COMPLETED = 1
    """Finished with ``success=True``."""
    FAILED = 2
    """Finished with ``success=False``."""
    ABORTED = 3
    """Cancelled before finishing (client disconnect, admin abort)."""
    HANDED_OFF = 4
    """Left this process after its first token (a prefill process handing the request to decode)."""


@dataclass(slots=True, eq=False)
class RequestMetrics:
    """One request's lifecycle timestamps and lengths.

    The six timestamps are the seed's. ``completion_time`` is also set when the request is
    aborted (then ``aborted`` is True and ``success`` False). ``token_times`` holds the times of
    the tokens streamed after the first one (`SemiPDMetricsCollector.record_token`); it stays
    ``None`` until the first of them. ``last_token_time`` is the time of the latest token after
    the first, whichever way it was recorded (`record_token` or the bulk
    `SemiPDMetricsCollector.record_decode_step`, which keeps no per-token times). ``serial`` is the
    arrival number a collector gives the request (it keys the request's token gaps in the window
    statistics); -1 outside a collector.
    """

    request_id: str
    arrival_time: float | None = None
    prefill_start_time: float | None = None
    first_token_time: float | None = None
    prefill_end_time: float | None = None
    decode_start_time: float | None = None
    completion_time: float | None = None
    input_length: int = 0
    output_length: int = 0
    success: bool = False
    aborted: bool = False
    handed_off: bool = False
    token_times: list[float] | None = None
    last_token_time: float | None = None
    serial: int = -1

    @property
    def status(self) -> RequestStatus:
        if self.aborted:
            return RequestStatus.ABORTED
        if self.completion_time is not None:
            return RequestStatus.COMPLETED if self.success else RequestStatus.FAILED
        if self.handed_off:
            return RequestStatus.HANDED_OFF
        return RequestStatus.IN_FLIGHT

    @property
    def is_finished(self) -> bool:
        """Completed, failed or aborted (a handed-off request is still alive in the next process)."""
        return self.completion_time is not None

    @property
    def ttft_ms(self) -> float | None:
        """Time to first token: first token - arrival (the seed's definition; includes queueing)."""
        if self.first_token_time is not None and self.arrival_time is not None:
            return (self.first_token_time - self.arrival_time) * 1000
        return None

    @property
    def tpot_ms(self) -> float | None:
        """Time per output token: (completion - first token) / (output_length - 1), as the seed and
        vLLM define it; None for one output token or fewer."""
        if self.completion_time is not None and self.first_token_time is not None and self.output_length > 1:
            return (self.completion_time - self.first_token_time) / (self.output_length - 1) * 1000
        return None

    @property
    def queue_time_ms(self) -> float | None:
        """Prefill start - arrival."""
        if self.prefill_start_time is not None and self.arrival_time is not None:
            return (self.prefill_start_time - self.arrival_time) * 1000
        return None

    @property
    def prefill_time_ms(self) -> float | None:
        """Prefill end - prefill start."""
        if self.prefill_end_time is not None and self.prefill_start_time is not None:
            return (self.prefill_end_time - self.prefill_start_time) * 1000
        return None

    @property
    def decode_time_ms(self) -> float | None:
        """Completion - decode start."""
        if self.completion_time is not None and self.decode_start_time is not None:
            return (self.completion_time - self.decode_start_time) * 1000
        return None

    @property
    def e2e_latency_ms(self) -> float | None:
        """Completion (or abort) - arrival."""
        if self.completion_time is not None and self.arrival_time is not None:
            return (self.completion_time - self.arrival_time) * 1000
        return None

    @property
    def itl_ms(self) -> list[float]:
        """Inter-token latencies: gaps between consecutive streamed tokens, starting from the first
        token when its time is known. Empty when no token after the first was recorded."""
        if not self.token_times:
            return []
        times = self.token_times if self.first_token_time is None else [self.first_token_time, *self.token_times]
        return [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]

    def latest_time(self) -> float | None:
        """The latest timestamp recorded on this request (None before arrival)."""
        latest = self.arrival_time
        for t in (self.prefill_start_time, self.first_token_time, self.prefill_end_time, self.decode_start_time,
                  self.completion_time):
            if t is not None and (latest is None or t > latest):
                latest = t
        last = self.last_token_time
        if last is None and self.token_times:
            last = self.token_times[-1]
        if last is not None and (latest is None or last > latest):
            latest = last
        return latest


@dataclass(frozen=True, slots=True)
class SystemMetrics:
    """A snapshot of engine state at `timestamp`, pushed by the engine or simulator through
    `SemiPDMetricsCollector.record_system_metrics` (the collector keeps the latest one).

    ``num_running_requests``: requests in the decode batch; ``num_waiting_requests``: requests
    queued for prefill; ``kv_cache_usage``: fraction of KV blocks in use, in [0, 1];
    ``prefill_sm_percentage`` / ``decode_sm_percentage``: the current SM split (None if unknown).
    """

    timestamp: float
    num_running_requests: int = 0
    num_waiting_requests: int = 0
    kv_cache_usage: float = 0.0
    prefill_sm_percentage: float | None = None
    decode_sm_percentage: float | None = None

    def __post_init__(self) -> None:
        if self.num_running_requests < 0:
            raise ValueError(f"num_running_requests must be >= 0, got {self.num_running_requests}")
        if self.num_waiting_requests < 0:
            raise ValueError(f"num_waiting_requests must be >= 0, got {self.num_waiting_requests}")
        if not 0.0 <= self.kv_cache_usage <= 1.0:
            raise ValueError(f"kv_cache_usage must be in [0, 1], got {self.kv_cache_usage}")
        for name in ("prefill_sm_percentage", "decode_sm_percentage"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be in [0, 100], got {value}")
