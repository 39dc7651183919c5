"""`DecodeWorker`: the Semi-PD thread that runs decode steps (CUDA-graph replays) on the decode
partition, admitting prefilled requests after their prefill event, and borrowing the whole
device while prefill is idle (see `semipd.engine.semi_pd.workers` for the loop and the switch protocol)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from semipd.engine.runtime.batch_inputs import HostBatch
from semipd.engine.runtime.model_runner import ModelRunner, PendingTokens
from semipd.engine.semi_pd.workers import Worker, WorkerContext
from semipd.partition.green import Partition
from semipd.sched import DecodeScheduler, Request
from semipd.sched.batch import AdvancedBatch, Batch


@dataclass
class WholeDeviceBorrow:
    """Lets the decode worker run on every SM while prefill has nothing to do."""

    stream: Any
    """A stream over the whole device (None on CPU)."""
    key: Hashable
    """Graph key of the decode graphs captured on `stream`."""
    prefill_idle: Callable[[], bool]


@dataclass(eq=False)
class _InFlight:
    """A launched decode step: its batch, tokens, step number, launch time; `advanced` once counted."""

    batch: Batch
    pending: PendingTokens
    step: int
    t0: float
    advanced: AdvancedBatch | None = None


class DecodeWorker(Worker):
    """Runs decode steps (one CUDA-graph replay per step when a graph covers the batch). With
    `overlap`, step N+1 is scheduled and launched before step N's tokens are read (the decode
    scheduler's `advance` / `resolve`); blocks freed meanwhile are parked behind a fence (the
    last launched step) and return to the pool once that step is done, so the prefill stream
    never writes into blocks a launched decode step still reads."""

    phase = "decode"

    def __init__(self, ctx: WorkerContext, scheduler: DecodeScheduler, runner: ModelRunner,
                 on_blocks_freed: Callable[[], None], borrow: WholeDeviceBorrow | None = None,
                 overlap: bool = True) -> None:
        super().__init__(ctx)
        self.overlap = overlap
        self._in_flight: _InFlight | None = None
        self._launched = 0
        """Steps launched so far (a step's number is its count; fences name steps)."""
        self.scheduler = scheduler
        self.runner = runner
        self.on_blocks_freed = on_blocks_freed
        """Called when finished or aborted requests returned KV blocks (prefill may be waiting for them)."""
        self.borrow = borrow
        self.borrowing = False
        """Whether the current launch stretch runs on the whole device."""
        self.num_graph_steps = 0
        self.num_eager_steps = 0
        self.num_borrowed_steps = 0
        self._inbox: deque[tuple[Request, Any]] = deque()
        self._inbox_lock = threading.Lock()

    def target_stream(self, part: Partition) -> Any:
        borrow = self.borrow
        self.borrowing = borrow is not None and borrow.prefill_idle()
        return borrow.stream if self.borrowing else part.stream(self.phase)

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
        """Admit hand-offs, apply aborts, schedule and launch the next step, then read the step
        launched before it (with ``overlap``; else the one just launched) and publish its tokens."""
        ctx, sched = self.ctx, self.scheduler
        self._admit_hand_offs()
        sched.fence = self._launched if self._in_flight is not None else None
        free = ctx.book.has_pending_aborts() and self.apply_aborts(sched.abort)
        batch = sched.schedule()
        if batch.is_empty and self._in_flight is None:
            if free:
                self.on_blocks_freed()
            return False
        launched: _InFlight | None = None
        if not batch.is_empty:
            launched = self._launch(batch)
        if self._in_flight is not None:
            self._resolve(self._in_flight)
            self._in_flight = None
        if launched is not None:
            sched.fence = launched.step
            launched.advanced = sched.advance(batch)
            if self.overlap:
                self._in_flight = launched
            else:
                self._resolve(launched)
        ctx.record_system_metrics()
        return True

    def _launch(self, batch: Batch) -> _InFlight | None:
        """Launch `batch` (its pending tokens fed from the step in flight); None if that failed."""
        self.num_iterations += 1
        t0 = self.ctx.clock.now()
        self.ctx.recorder.decode_started(batch.decodes, t0)
        previous = self._in_flight.pending if self._in_flight is not None else None
        try:
            host = self.runner.host_batch(batch)  # host-only work stays outside the launch stretch
            with self.launch_stretch() as part:
                if self.borrowing:
                    self.num_borrowed_steps += 1
                key = self.borrow.key if self.borrowing else part.prefill_sms
                pending = self.launch_step(batch, key, host, previous)
        except Exception as exc:
            self._fail(batch, exc)
            return None
        self._launched += 1
        return _InFlight(batch, pending, self._launched, t0)

    def _resolve(self, step: _InFlight) -> None:
        """Read a launched step's tokens, publish them, and free what waited for the step."""
        sched = self.scheduler
        sched.fence = self._launched  # a request stopping here may be in a later launched step
        try:
            tokens = self.wait_tokens(step.pending)
            assert step.advanced is not None
            got = sched.resolve(step.advanced, tokens)
        except Exception as exc:
            self._fail(step.batch, exc)
            return
        t1 = self.ctx.clock.now()
        self.timings.append((len(step.batch.decodes), t1 - step.t0))
        self.publish(got, t1)
        if sched.allocator.release(step.step):
            self.on_blocks_freed()

    def _fail(self, batch: Batch, exc: Exception) -> None:
        """A batch failed: abort its requests once the stream drained; every parked block is free then."""
        self.batch_failed(batch, exc, self.scheduler.abort)
        self.scheduler.allocator.release(self._launched)
        self.on_blocks_freed()

    def run_step(self, batch: Batch, graph_key: Hashable) -> list[int]:
        """`launch_step` and wait: the sampled token ids (the timing probes use it)."""
        return self.launch_step(batch, graph_key).wait()

    def launch_step(self, batch: Batch, graph_key: Hashable, host: HostBatch | None = None,
                    previous: PendingTokens | None = None) -> PendingTokens:
        """Launch one decode step: a replay of the graph set of the current partition (keyed by
        its prefill SM count) when it covers the batch, else eager. Pending tokens come from
        `previous`, the step launched before."""
        pending = self.runner.launch(batch, graph_key, host=host, previous=previous)
        if self.runner.last_run_graphed:
            self.num_graph_steps += 1
        else:
            self.num_eager_steps += 1
        return pending
