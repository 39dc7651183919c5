"""What the Semi-PD engine's two workers share: threads that run prefill and decode at the same
time, each on the CUDA stream of its SM partition, over one model and one paged KV cache
(`semipd.engine.semi_pd.prefill_worker`, `semipd.engine.semi_pd.decode_worker`).

Each iteration of a worker::

    boundary:  apply the caller's aborts it can (it holds the request; nothing in flight)
               (decode) admit hand-offs: its stream waits on each request's prefill event
    schedule -> launch stretch(es) on its partition's stream -> wait for the sampled ids
             -> scheduler.update -> publish the outputs (`RequestBook`), record the lifecycle
                events, hand prefilled requests on

Launch stretches are bracketed with the `PartitionManager` (``launching``), which is how a
switch reaches a worker within a few milliseconds: the decode worker launches a whole step
in one short stretch (a graph replay); the prefill worker ends and begins a stretch at every
decoder layer, and there it also keeps at most ``prefill_launch_lookahead_layers`` layers
queued ahead of the GPU, so the work it leaves on its old SMs after a switch is a few
layers, not the rest of a long iteration. Entering a new partition's stream first orders it
after the old one.

Hand-off: a prefilled request (KV blocks attached) and a CUDA event recorded on the prefill
stream after its forward go to the decode worker's inbox; metadata only, never a KV copy.

A worker never dies silently: a failed batch is logged and counted, its requests are aborted
(blocks freed, after the stream has drained) and reported through the book as a `StepError`;
an error outside a batch is logged and counted; the loop goes on. `stop()` ends the loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from semipd.clock import Clock
from semipd.engine.errors import StepError
from semipd.engine.runtime.model_runner import ModelRunner, PendingTokens
from semipd.engine.semi_pd.request_book import RequestBook
from semipd.metrics.recorder import LifecycleRecorder
from semipd.partition.green import Partition, PartitionManager
from semipd.sched import Request
from semipd.sched.batch import Batch

logger = logging.getLogger(__name__)

IDLE_POLL_S = 0.1
"""An idle worker re-checks its work at least this often (a safety net under the wake-ups)."""


@dataclass
class WorkerContext:
    """What both workers share."""

    device: torch.device
    partitions: PartitionManager
    book: RequestBook
    recorder: LifecycleRecorder
    clock: Clock
    record_system_metrics: Callable[[], None]


class LaunchThrottle:
    """Keeps the host at most `lookahead` marks (decoder layers) ahead of the GPU: `mark`
    records an event on the stream and, past `lookahead` outstanding events, waits (without
    the GIL) for the oldest. No-op without a stream (CPU)."""

    def __init__(self, lookahead: int) -> None:
        self.lookahead = lookahead
        self._queued: deque[Any] = deque()
        self._spare: list[Any] = []

    def mark(self, stream: Any) -> None:
        if stream is None:
            return
        event = self._spare.pop() if self._spare else torch.cuda.Event()
        event.record(stream)
        self._queued.append(event)
        if len(self._queued) > self.lookahead:
            oldest = self._queued.popleft()
            oldest.synchronize()
            self._spare.append(oldest)

    def reset(self) -> None:
        """Forget the outstanding events (the caller waited for the whole batch)."""
        self._spare.extend(self._queued)
        self._queued.clear()


def throttled_prefill(runner: ModelRunner, throttle: LaunchThrottle, batch: Batch, stream: Any) -> list[int]:
    """One prefill batch on the current stream (`stream`) as the prefill worker launches it, with
    `throttle` marking each decoder layer; waits for the sampled ids. For warm-up and probes."""
    try:
        return runner.launch(batch, layer_hook=lambda _: throttle.mark(stream)).wait()
    finally:
        throttle.reset()


class Worker(threading.Thread):
    """Loop, partition switching, idling, stats and error handling common to both phases.
    Subclasses implement `iteration` (True when it did work)."""

    phase = ""

    def __init__(self, ctx: WorkerContext, history: int = 4096) -> None:
        super().__init__(name=f"semipd-{self.phase}", daemon=True)
        self.ctx = ctx
        self._cond = threading.Condition()
        self._woken = True
        self._stopping = False
        self.stream: Any = None
        self.num_iterations = 0
        self.num_errors = 0
        self.last_error: str | None = None
        self.timings: deque[tuple[int, float]] = deque(maxlen=history)
        """(work size, seconds) per iteration: tokens for prefill, batch size for decode."""
        self.started_at: float | None = None
        self.busy_seconds = 0.0
        """Wall time spent in iterations that did work (``time.perf_counter``)."""
        self.wait_seconds = 0.0
        """Of `busy_seconds`, the time spent waiting for the device to return sampled tokens."""

    # -- control --------------------------------------------------------------------------
    def wake(self) -> None:
        """New work may be there (a request, a hand-off, an abort, a switch)."""
        with self._cond:
            self._woken = True
            self._cond.notify()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout)

    def _idle(self) -> None:
        with self._cond:
            if not self._woken and not self._stopping:
                self._cond.wait(IDLE_POLL_S)
            self._woken = False

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self) -> None:
        try:
            if self.ctx.device.type == "cuda":
                torch.cuda.set_device(self.ctx.device)  # before the thread's first cuBLAS call
        except Exception as exc:
            self._count_error(exc)
            logger.exception("%s worker: cannot start", self.phase)
            return
        with torch.inference_mode():
            with self.launch_stretch():
                pass  # take the first partition's stream before any hand-off waits on it
            self.started_at = time.perf_counter()
            while not self._stopping:
                start = time.perf_counter()
                try:
                    busy = self.iteration()
                    if busy:
                        self.busy_seconds += time.perf_counter() - start
                except Exception as exc:  # outside a batch: log, count, go on
                    self._count_error(exc)
                    logger.exception("%s worker: iteration failed", self.phase)
                    busy = False
                if not busy:
                    self._idle()

    # -- pieces for subclasses --------------------------------------------------------------
    def target_stream(self, part: Partition) -> Any:
        """The stream to launch on within `part` (the decode worker may borrow the whole device)."""
        return part.stream(self.phase)

    def _move(self, part: Partition) -> None:
        """Run on `target_stream(part)` from now on; a new stream first waits on the old one (this
        worker's earlier work stays ahead of its later work). Sets the current torch stream."""
        stream = self.target_stream(part)
        if stream is not self.stream:
            if stream is not None and self.stream is not None:
                stream.wait_stream(self.stream)
            self.stream = stream
            if stream is not None:
                torch.cuda.set_stream(stream)

    @contextlib.contextmanager
    def launch_stretch(self) -> Iterator[Partition]:
        """``with self.launch_stretch() as part:`` launch on the current partition's stream."""
        with self.ctx.partitions.launching(self.phase) as part, self.on_stream():
            self._move(part)
            yield part

    def on_stream(self) -> contextlib.AbstractContextManager:
        """Restores the caller's current stream on exit (`_move` may change it inside)."""
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def wait_tokens(self, pending: PendingTokens) -> list[int]:
        start = time.perf_counter()
        try:
            return pending.wait()
        finally:
            self.wait_seconds += time.perf_counter() - start

    def _count_error(self, exc: BaseException) -> None:
        self.num_errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"

    def apply_aborts(self, abort: Callable[[str], Request | None]) -> bool:
        """Abort (free) the requests the caller aborted that this worker's scheduler holds;
        True when there were any."""
        book = self.ctx.book
        done = False
        for rid in book.pending_aborts():
            if abort(rid) is not None:
                book.abort_done(rid)
                done = True
        return done

    def batch_failed(self, batch: Batch, exc: Exception, abort: Callable[[str], Request | None]) -> None:
        """Drain the stream, abort the batch's requests (frees their blocks), report the failure."""
        self._count_error(exc)
        logger.exception("%s worker: batch failed; aborting its requests", self.phase)
        if self.stream is not None:
            with contextlib.suppress(Exception):
                self.stream.synchronize()  # nothing may still write into blocks about to be freed
        requests = list(dict.fromkeys([c.request for c in batch.prefills] + list(batch.decodes)))
        for req in requests:
            try:
                abort(req.rid)
            except Exception:
                logger.exception("%s worker: could not abort %s", self.phase, req.rid)
        rids = [r.rid for r in requests]
        error = StepError(rids, f"{self.phase} iteration {self.num_iterations} failed ({self.last_error}); "
                                f"aborted {len(rids)} requests")
        error.__cause__ = exc
        now = self.ctx.clock.now()
        for rid in self.ctx.book.fail(rids, error):
            self.ctx.recorder.failed(rid, now)

    def publish(self, requests: list[Request], t: float) -> None:
        """Outputs and lifecycle events of `requests`, which each got a token at time `t`."""
        published = self.ctx.book.publish(requests, lambda r: r.payload.take_delta(r))
        self.ctx.recorder.sampled(published, t)
