"""`AsyncEngine`: `Engine.step` in a background thread, streams to asyncio consumers.

Callers (any event loop, any thread) hand requests and aborts to the engine thread
through a locked inbox; the engine thread applies them at iteration boundaries (so an
abort never frees blocks under a running batch), steps, and delivers each `RequestOutput`
to the request's `asyncio.Queue` with ``loop.call_soon_threadsafe``. The thread never dies
silently: a failed step is logged and counted, its requests end with `RequestFailedError`,
and the loop goes on with the rest.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import torch

from semipd.allocation import SMAllocation
from semipd.engine.engine import Engine, StepError
from semipd.engine.sampling_params import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)


def _put_all(items: list[tuple[asyncio.Queue, Any]]) -> None:
    for queue, item in items:
        queue.put_nowait(item)


class QueueFullError(RuntimeError):
    """More than `max_waiting` requests are waiting; retry later (HTTP 503)."""


class RequestFailedError(RuntimeError):
    """The engine could not finish the request (a failed step, or the engine stopped)."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    last: RequestOutput | None = None


class AsyncEngine:
    """Thread-safe, asyncio-facing wrapper of an `Engine`."""

    def __init__(self, engine: Engine, max_waiting: int = 1024) -> None:
        if max_waiting < 1:
            raise ValueError(f"max_waiting must be >= 1, got {max_waiting}")
        self.engine = engine
        self.max_waiting = max_waiting
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
        if hasattr(engine, "set_allocation"):  # engines with SM partitions offer manual allocation
            self.set_sm_allocation = self._set_sm_allocation

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the engine thread (idempotent)."""
        with self._cond:
            if self._thread is not None and self._thread.is_alive():
                return
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
                self._deliver(rid, RequestFailedError("the engine stopped"))
            self._adds.clear()

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
        finished = False
        try:
            while True:
                item = await stream.queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                finished = item.finished
                yield item
                if finished:
                    return
        finally:
            if not finished:
                self.abort(rid)

    def abort(self, rid: str) -> None:
        """Abort `rid` at the next iteration boundary (thread-safe); its stream gets a final
        output with finish_reason "abort". Unknown ids are ignored."""
        with self._cond:
            self._aborts.append(rid)
            self._cond.notify()

    def _set_sm_allocation(self, allocation: SMAllocation) -> None:
        """``set_sm_allocation``, present when the engine has SM partitions (mode semi-pd): apply
        `allocation` by hand (the engine's controller becomes static). Thread-safe; ValueError
        when the engine cannot realise it."""
        self.engine.set_allocation(allocation.prefill_percentage, allocation.decode_percentage)

    def get_status(self) -> dict[str, Any]:
        """`Engine.get_status()` plus the engine thread's health and queue."""
        with self._engine_lock:
            status = self.engine.get_status()
        status.update(engine_thread_alive=self.is_running, num_step_errors=self.num_step_errors,
                      last_error=self.last_error, num_pending=len(self._adds), max_waiting=self.max_waiting)
        return status

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
                if isinstance(item, RequestOutput):
                    stream.last = item
                by_loop.setdefault(stream.loop, []).append((rid, stream, item, done))
        for loop, batch in by_loop.items():
            try:
                loop.call_soon_threadsafe(_put_all, [(stream.queue, item) for _, stream, item, _ in batch])
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                for rid, _, _, done in batch:
                    if not done:
                        self.engine.abort(rid)
                        with self._cond:
                            self._streams.pop(rid, None)

    def _take_inbox(self) -> tuple[list[tuple[str, list[int], SamplingParams]], list[str]] | None:
        """Wait for work; None when stopping."""
        with self._cond:
            while not (self._stopping or self._adds or self._aborts or self.engine.has_unfinished()):
                self._cond.wait()
            if self._stopping:
                return None
            adds, aborts = self._adds, self._aborts
            self._adds, self._aborts = [], []
            self._in_transit = len(adds)
            return adds, aborts

    def _abort_output(self, rid: str) -> RequestOutput:
        last = self._streams[rid].last
        return RequestOutput(rid=rid, new_token_ids=[], new_text="", token_ids=last.token_ids if last else [],
                             text=last.text if last else "", finished=True, finish_reason="abort",
                             num_prompt_tokens=last.num_prompt_tokens if last else 0,
                             num_output_tokens=last.num_output_tokens if last else 0)

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
        try:
            for rid, prompt, params in adds:
                if rid in aborted:
                    continue
                try:
                    self.engine.add_request(rid, prompt, params)
                except ValueError as exc:
                    self._deliver(rid, exc)
        finally:
            with self._cond:
                self._in_transit = 0
        for rid in aborted:
            self.engine.abort(rid)
            if rid in self._streams:
                self._deliver(rid, self._abort_output(rid))
        if not self.engine.has_unfinished():
            return
        try:
            outputs = self.engine.step()
        except StepError as exc:
            self.num_step_errors += 1
            self.last_error = str(exc)
            logger.error("%s", exc, exc_info=exc.__cause__)
            for rid in exc.rids:
                self._deliver(rid, RequestFailedError(str(exc)))
            return
        self._deliver_all([(out.rid, out) for out in outputs])

    def _fail_all(self, exc: Exception) -> None:
        """An error outside a step (the engine's state is unknown): end every open request."""
        self.num_step_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        logger.exception("engine loop error; failing %d open requests", len(self._streams))
        for rid in list(self._streams):
            self.engine.abort(rid)
            self._deliver(rid, RequestFailedError(self.last_error))
