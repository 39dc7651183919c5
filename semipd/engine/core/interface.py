"""`EngineClient`: what the API server needs from an engine, as one typed interface.

Two implementations: `EngineCoreClient` (``semipd.engine.core.client``: the engine in its own
process, over ZeroMQ; what `semipd serve` runs) and `InProcessClient`
(``semipd.engine.core.in_process``: an `AsyncEngine` thread in this process; tests and embedding).
Torch-free, like everything the API process imports.
"""

from __future__ import annotations

import asyncio
import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from typing import Any

from semipd.allocation import SMAllocation
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.engine.tokenizer import Tokenizer
from semipd.metrics import SemiPDMetricsCollector


class QueueFullError(RuntimeError):
    """More than `max_waiting` requests are waiting; retry later (HTTP 503)."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestFailedError(RuntimeError):
    """The engine could not finish the request (a failed step, or the engine stopped)."""


class EngineUnavailableError(RuntimeError):
    """The engine is not running (not started, stopped, or its process died): HTTP 503."""


class NoPartitionsError(ValueError):
    """The engine has no SM partitions to allocate (e.g. unified mode)."""


async def stream_outputs(queue: asyncio.Queue, on_leave: Callable[[], None]) -> AsyncIterator[RequestOutput]:
    """Yield a request's outputs from `queue` until a finished one; an exception put there is raised.
    `on_leave` runs when the consumer stops early (closed iterator, cancelled task): it aborts."""
    finished = False
    try:
        while True:
            item = await queue.get()
            if isinstance(item, BaseException):
                finished = True
                raise item
            finished = item.finished
            yield item
            if finished:
                return
    finally:
        if not finished:
            on_leave()


class EngineClient(ABC):
    """The server's view of an engine. Attributes, set once the client is started:

    ``tokenizer`` (None: token ids only), ``max_model_len``, ``vocab_size``, ``mode``
    ("unified" or "semi-pd"), ``has_partitions``, ``max_waiting``, and ``metrics_collector``: the
    lifecycle of requests as clients see them (what /metrics exports)."""

    tokenizer: Tokenizer | None
    max_model_len: int
    vocab_size: int
    mode: str
    has_partitions: bool
    max_waiting: int
    metrics_collector: SemiPDMetricsCollector

    @abstractmethod
    async def start(self) -> None:
        """Start the engine (load the model, or attach to it); returns once it takes requests."""

    @abstractmethod
    async def stop(self) -> None:
        """Stop the engine; open requests end with `RequestFailedError`."""

    @property
    @abstractmethod
    def is_running(self) -> bool:
        """Whether the engine takes and runs requests (health)."""

    @abstractmethod
    def generate(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                 arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs until one is finished. `arrival_time` (``time.monotonic``)
        is when the request reached the server (default: now).

        Raises ValueError for an invalid request or a duplicate live `rid`, QueueFullError past
        `max_waiting`, EngineUnavailableError when the engine is not running, RequestFailedError
        if the engine fails it. Closing the iterator early aborts the request."""

    @abstractmethod
    def abort(self, rid: str) -> None:
        """Abort `rid` (no-op for an unknown id); its KV blocks come back."""

    @abstractmethod
    def get_status(self) -> dict[str, Any]:
        """The engine's latest published status; never waits for the engine."""

    @abstractmethod
    async def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        """Apply a split by hand (the controller becomes static); returns the split applied (snapped
        to the partition grid). NoPartitionsError without partitions, ValueError if unrealisable."""

    @property
    @abstractmethod
    def num_waiting(self) -> int:
        """Requests accepted that have no token yet (queued or in prefill)."""

    # -- shared by the implementations --------------------------------------------------------
    def retry_after_s(self) -> float:
        """Seconds a client refused for a full queue should wait: about what a request that queues
        now waits for its first token (the recent median TTFT), at least 1."""
        ttft_ms = self.metrics_collector.get_current_window_metrics().ttft_p50
        return max(1.0, math.ceil(ttft_ms / 1000.0))

    def record_status_metrics(self, status: dict[str, Any]) -> None:
        """Feed an engine status snapshot's queue, KV and SM figures to `metrics_collector`, whose
        latest system metrics are the Prometheus gauges. Snapshots are taken whether or not the
        engine steps, so the gauges fall back to 0 once aborted requests have left the engine."""
        alloc = status.get("allocation")
        kv = status.get("kv_cache") or {}
        self.metrics_collector.record_system_metrics(
            int(status.get("num_running", 0)), int(status.get("num_waiting", 0)), float(kv.get("usage", 0.0)),
            SMAllocation(alloc["prefill_percentage"], alloc["decode_percentage"]) if alloc else None)
