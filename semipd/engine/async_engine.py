"""`AsyncEngine`: `Engine.step` in a background thread of this process, streams to asyncio consumers.

The in-process engine driver (`LLM`-like use from async code, and the server's tests); the
server itself runs the engine in its own process (`semipd.engine.core`). Callers (any event
loop, any thread) hand requests and aborts to the engine thread through a locked inbox; the
engine thread applies them at iteration boundaries (so an abort never frees blocks under a
running batch), steps, turns the token-id deltas into `RequestOutput`s (`OutputProcessor`:
text, stop strings) and delivers them to each request's `asyncio.Queue` with
``loop.call_soon_threadsafe``. `get_status` returns a snapshot the engine thread refreshes
every `status_interval_s`, so no caller ever waits for a step. The thread never dies
silently: a failed step is logged and counted, its requests end with `RequestFailedError`,
and the loop goes on with the rest.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch

from semipd.allocation import SMAllocation
from semipd.engine.core.interface import QueueFullError, RequestFailedError, stream_outputs
from semipd.engine.engine import Engine
from semipd.engine.errors import StepError
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.sampling_params import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue


class AsyncEngine:
    """Thread-safe, asyncio-facing wrapper of an `Engine`."""

    def __init__(self, engine: Engine, max_waiting: int = 1024, status_interval_s: float = 0.2) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        if not status_interval_s > 0:
            raise ValueError(f"status_interval_s must be > 0, got {status_interval_s}")
        self.engine = engine
        self.max_waiting = max_waiting
        self.status_interval_s = status_interval_s
        self._processor = OutputProcessor(engine.tokenizer)
        self._snapshot: dict[str, Any] = {}
        self._snapshot_time = float("-inf")
        self._cond = threading.Condition()
        self._adds: list[tuple[str, list[int], SamplingParams]] = []
        self._aborts: list[str] = []
        self._in_transit = 0
        """Adds the engine thread has taken from the inbox but not yet given to the engine."""
        self._streams: dict[str, _Stream] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._engine_lock = threading.Lock()
        self.num_step_errors = 0
        self.last_error: str | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
            self._refresh_status()
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="semipd-engine", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine thread; requests still open end with `RequestFailedError`."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._engine_lock:
            for rid in list(self._streams):
                self.engine.abort(rid)
                self._processor.drop(rid)
                self._deliver(rid, RequestFailedError("the engine stopped"))
            self._adds.clear()
            self._refresh_status()

    @property
    def mode(self) -> str:
        """The engine's mode: "unified" or "semi-pd" (which has SM partitions to allocate)."""
        return self.engine.config.mode

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- requests -------------------------------------------------------------------------
    @property
    def num_waiting(self) -> int:
        """Requests not yet running: handed to the engine thread, or in the scheduler's queue."""
        return len(self._adds) + self._in_transit + self.engine.scheduler.num_waiting

    async def generate(self, rid: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Stream the request's outputs until one is finished.

        Raises ValueError for an invalid request or a duplicate live `rid`, QueueFullError past
        `max_waiting`, RequestFailedError if the engine fails it. Closing the iterator early
        (a client gone) aborts the request and frees its blocks."""
        self.engine.validate_request(prompt_token_ids, params)
        stream = _Stream(asyncio.get_running_loop(), asyncio.Queue())
        with self._cond:
            if not self.is_running:
                raise RequestFailedError("the engine is not running")
            if rid in self._streams:
                raise ValueError(f"request id {rid!r} is already running")
            if self.num_waiting >= self.max_waiting:
                raise QueueFullError(f"{self.num_waiting} requests are waiting (max_waiting={self.max_waiting})")
            self._streams[rid] = stream
            self._adds.append((rid, list(prompt_token_ids), params))
            self._cond.notify()
        async for out in stream_outputs(stream.queue, lambda: self.abort(rid)):
            yield out

    def abort(self, rid: str) -> None:
        """Abort `rid` at the next iteration boundary (thread-safe); its stream gets a final
        output with finish_reason "abort". Unknown ids are ignored."""
        with self._cond:
            self._aborts.append(rid)
            self._cond.notify()

    def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        """Apply `allocation` by hand (mode semi-pd; the engine's controller becomes static) and mark
        the status snapshot stale; returns the split applied. Thread-safe; ValueError when the
        engine cannot realise it."""
        applied = self.engine.set_allocation(allocation.prefill_percentage, allocation.decode_percentage)
        self._snapshot_time = float("-inf")
        return applied

    def get_status(self) -> dict[str, Any]:
        """The engine thread's latest `Engine.get_status()` snapshot (at most `status_interval_s`
        old while it runs; never waits for a step) plus the thread's health and queue."""
        status = dict(self._snapshot)
        status.update(engine_thread_alive=self.is_running, num_step_errors=self.num_step_errors,
                      last_error=self.last_error, num_pending=len(self._adds), max_waiting=self.max_waiting,
                      status_age_s=round(max(0.0, time.monotonic() - self._snapshot_time), 3))
        return status

    def _refresh_status(self) -> None:
        """Take a new status snapshot (engine thread, or with the engine idle)."""
        try:
            self._snapshot = self.engine.get_status()
        except Exception:  # a status that cannot be read must not stop the engine loop
            logger.exception("engine status failed")
        self._snapshot_time = time.monotonic()

    def _maybe_refresh_status(self) -> None:
        if time.monotonic() - self._snapshot_time >= self.status_interval_s:
            self._refresh_status()

    # -- engine thread --------------------------------------------------------------------
    def _deliver(self, rid: str, item: RequestOutput | BaseException) -> None:
        self._deliver_all([(rid, item)])

    def _deliver_all(self, items: list[tuple[str, RequestOutput | BaseException]]) -> None:
        """Hand each item to its request's queue: one wake-up per event loop for the whole list
        (a step's outputs), not one per output, so the server's loop and the engine's workers
        spend less of the shared GIL on thread hand-offs."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[str, _Stream, RequestOutput | BaseException, bool]]] = {}
        with self._cond:
            for rid, item in items:
                done = isinstance(item, BaseException) or item.finished
                stream = self._streams.pop(rid, None) if done else self._streams.get(rid)
                if stream is None:
                    continue
                by_loop.setdefault(stream.loop, []).append((rid, stream, item, done))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(stream.queue, item) for _, stream, item, _ in batch])
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                for rid, _, _, done in batch:
                    if not done:
                        self.engine.abort(rid)
                        self._processor.drop(rid)
                        with self._cond:
                            self._streams.pop(rid, None)

    def _take_inbox(self) -> tuple[list[tuple[str, list[int], SamplingParams]], list[str]] | None:
        """Wait for work; None when stopping."""
        with self._cond:
            while not (self._stopping or self._adds or self._aborts or self.engine.has_unfinished()):
                if not self._cond.wait(self.status_interval_s):
                    self._refresh_status()  # idle: the status still moves (controller, metrics)
            if self._stopping:
                return None
            adds, aborts = self._adds, self._aborts
            self._adds, self._aborts = [], []
            self._in_transit = len(adds)
            return adds, aborts

    def _run(self) -> None:
        if self.engine.device.type == "cuda":
            torch.cuda.set_device(self.engine.device)  # a new thread must make the device current before cuBLAS
        while True:
            inbox = self._take_inbox()
            if inbox is None:
                return
            adds, aborts = inbox
            with self._engine_lock:
                try:
                    self._iterate(adds, aborts)
                except Exception as exc:  # the loop must survive anything
                    self._fail_all(exc)

    def _iterate(self, adds: list[tuple[str, list[int], SamplingParams]], aborts: list[str]) -> None:
        aborted = set(aborts)
        processor = self._processor
        try:
            for rid, prompt, params in adds:
                if rid in aborted:
                    continue
                try:
                    self.engine.add_request(rid, prompt, params)
                except ValueError as exc:
                    self._deliver(rid, exc)
                    continue
                processor.add(rid, prompt, params)
        finally:
            with self._cond:
                self._in_transit = 0
        for rid in aborted:
            self.engine.abort(rid)
            final = processor.abort(rid)
            if final is not None:
                self._deliver(rid, final)
        if self.engine.has_unfinished():
            self._step()
        self._maybe_refresh_status()

    def _step(self) -> None:
        processor = self._processor
        try:
            deltas = self.engine.step()
        except StepError as exc:
            self.num_step_errors += 1
            self.last_error = str(exc)
            logger.error("%s", exc, exc_info=exc.__cause__)
            for rid in exc.rids:
                processor.drop(rid)
                self._deliver(rid, RequestFailedError(str(exc)))
            return
        items: list[tuple[str, RequestOutput | BaseException]] = []
        for delta in deltas:
            processed = processor.process(delta)
            if processed is None:
                continue
            if processed.abort_in_engine:  # a stop string ended it here; the engine still runs it
                self.engine.abort(delta.rid)
            items.append((delta.rid, processed.output))
        self._deliver_all(items)

    def _fail_all(self, exc: Exception) -> None:
        """An error outside a step (the engine's state is unknown): end every open request."""
        self.num_step_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.exception("engine loop error; failing %d open requests", len(self._streams))
        for rid in list(self._streams):
            self.engine.abort(rid)
            self._processor.drop(rid)
            self._deliver(rid, RequestFailedError(self.last_error))
