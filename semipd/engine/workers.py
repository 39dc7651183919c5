"""The Semi-PD engine's two workers: threads that run prefill and decode at the same time,
each on the CUDA stream of its SM partition, over one model and one paged KV cache.

Each iteration of a worker::

    boundary:  apply the caller's aborts it can (it holds the request; nothing in flight)
               partition(phase) -> stream; a new stream first waits on the old one
               (decode) admit hand-offs: its stream waits on each request's prefill event
    schedule -> run on the stream (one host sync: the sampled token ids) -> scheduler.update
    publish the outputs (`RequestBook`), record the lifecycle events, hand prefilled requests on

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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from semipd.clock import Clock
from semipd.engine.engine import StepError
from semipd.engine.model_runner import ModelRunner
from semipd.engine.request_book import RequestBook
from semipd.metrics import SemiPDMetricsCollector
from semipd.partition.green import Partition, PartitionManager
from semipd.sched import DecodeScheduler, PrefillScheduler, Request
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
    collector: SemiPDMetricsCollector
    clock: Clock
    record_system_metrics: Callable[[], None]


class Worker(threading.Thread):
    """Loop, partition switching, idling, stats and error handling common to both phases.
    Subclasses implement `iteration` (True when it did work) and `fail_batch`."""

    phase = ""

    def __init__(self, ctx: WorkerContext, history: int = 4096) -> None:
        super().__init__(name=f"semipd-{self.phase}", daemon=True)
        self.ctx = ctx
        self._cond = threading.Condition()
        self._woken = True
        self._stopping = False
        self.stream: Any = None
        self.partition: Partition | None = None
        self.num_iterations = 0
        self.num_errors = 0
        self.last_error: str | None = None
        self.timings: deque[tuple[int, float]] = deque(maxlen=history)
        """(work size, seconds) per iteration: tokens for prefill, batch size for decode."""

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
            while not self._stopping:
                try:
                    busy = self.iteration()
                except Exception as exc:  # outside a batch: log, count, go on
                    self._count_error(exc)
                    logger.exception("%s worker: iteration failed", self.phase)
                    busy = False
                if not busy:
                    self._idle()

    # -- pieces for subclasses --------------------------------------------------------------
    def enter_partition(self) -> Partition:
        """The current partition; when its stream differs from the last one, order the new
        stream after the old (this worker's earlier work stays ahead of its later work)."""
        part = self.ctx.partitions.partition(self.phase)
        stream = part.stream(self.phase)
        if stream is not self.stream:
            if stream is not None and self.stream is not None:
                stream.wait_stream(self.stream)
            self.stream = stream
        self.partition = part
        return part

    def on_stream(self) -> contextlib.AbstractContextManager:
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

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
            self.ctx.collector.record_request_completion(rid, 0, success=False, timestamp=now)

    def publish(self, requests: list[Request], t: float) -> None:
        """Outputs and lifecycle events of `requests`, which each got a token at time `t`."""
        published = self.ctx.book.publish(requests, lambda r: r.payload.take_output(r))
        collector = self.ctx.collector
        for req in published:
            seq = req.payload
            if not seq.first_token_done:
                seq.first_token_done = True
                collector.record_first_token(req.rid, timestamp=t)
                collector.record_prefill_end(req.rid, timestamp=t)
            else:
                collector.record_token(req.rid, timestamp=t)
            if req.is_finished:
                collector.record_request_completion(req.rid, req.num_output_tokens, success=True, timestamp=t)


class PrefillWorker(Worker):
    """Runs prefill batches (chunked, FCFS) and hands prefilled requests to decode."""

    phase = "prefill"

    def __init__(self, ctx: WorkerContext, scheduler: PrefillScheduler, runner: ModelRunner,
                 hand_off: Callable[[Request, Any], None]) -> None:
        super().__init__(ctx)
        self.scheduler = scheduler
        self.runner = runner
        self.hand_off = hand_off

    def iteration(self) -> bool:
        ctx = self.ctx
        if ctx.book.has_pending_aborts():
            self.apply_aborts(self.scheduler.abort)
        self.enter_partition()
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return False
        self.num_iterations += 1
        t0 = ctx.clock.now()
        for chunk in batch.prefills:
            seq = chunk.request.payload
            if not seq.prefill_started:
                seq.prefill_started = True
                ctx.collector.record_prefill_start(chunk.request.rid, timestamp=t0)
        try:
            with self.on_stream():
                tokens = self.runner.run(batch)
                event = None
                if self.stream is not None:
                    event = torch.cuda.Event()
                    event.record(self.stream)
            handoffs = self.scheduler.update(batch, tokens)
        except Exception as exc:
            self.batch_failed(batch, exc, self.scheduler.abort)
            return True
        t1 = ctx.clock.now()
        self.timings.append((batch.num_prefill_tokens, t1 - t0))
        self.publish(batch.sampled_requests(), t1)
        for req in handoffs:
            self.hand_off(req, event)
        ctx.record_system_metrics()
        return True


class DecodeWorker(Worker):
    """Runs decode steps (one CUDA-graph replay per step when a graph covers the batch)."""

    phase = "decode"

    def __init__(self, ctx: WorkerContext, scheduler: DecodeScheduler, runner: ModelRunner,
                 on_blocks_freed: Callable[[], None]) -> None:
        super().__init__(ctx)
        self.scheduler = scheduler
        self.runner = runner
        self.on_blocks_freed = on_blocks_freed
        """Called when finished or aborted requests returned KV blocks (prefill may be waiting for them)."""
        self.num_graph_steps = 0
        self.num_eager_steps = 0
        self._inbox: deque[tuple[Request, Any]] = deque()
        self._inbox_lock = threading.Lock()

    def hand_off(self, request: Request, event: Any) -> None:
        """A prefilled request and the event after which its KV is complete (None on CPU)."""
        with self._inbox_lock:
            self._inbox.append((request, event))
        self.wake()

    @property
    def num_inbox(self) -> int:
        return len(self._inbox)

    def _admit_hand_offs(self) -> None:
        with self._inbox_lock:
            items, self._inbox = self._inbox, deque()
        for req, event in items:
            if event is not None and self.stream is not None:
                self.stream.wait_event(event)
            self.scheduler.add_request(req)

    def iteration(self) -> bool:
        ctx = self.ctx
        part = self.enter_partition()
        self._admit_hand_offs()
        free = ctx.book.has_pending_aborts() and self.apply_aborts(self.scheduler.abort)
        batch = self.scheduler.schedule()
        if batch.is_empty:
            if free:
                self.on_blocks_freed()
            return False
        self.num_iterations += 1
        t0 = ctx.clock.now()
        for req in batch.decodes:
            if not req.payload.decode_started:
                req.payload.decode_started = True
                ctx.collector.record_decode_start(req.rid, timestamp=t0)
        try:
            with self.on_stream():
                tokens = self.run_step(batch, part.prefill_sms)
            finished = self.scheduler.update(batch, tokens)
        except Exception as exc:
            self.batch_failed(batch, exc, self.scheduler.abort)
            self.on_blocks_freed()
            return True
        t1 = ctx.clock.now()
        self.timings.append((len(batch.decodes), t1 - t0))
        self.publish(batch.decodes, t1)
        if finished or free:
            self.on_blocks_freed()
        ctx.record_system_metrics()
        return True

    def run_step(self, batch: Batch, graph_key: int) -> list[int]:
        """One decode step through the runner: a replay of the graph set of the current partition
        (keyed by its prefill SM count) when it covers the batch, else eager. The sampled token ids."""
        tokens = self.runner.run(batch, graph_key)
        if self.runner.last_run_graphed:
            self.num_graph_steps += 1
        else:
            self.num_eager_steps += 1
        return tokens
