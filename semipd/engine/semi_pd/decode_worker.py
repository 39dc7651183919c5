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
from semipd.sched.batch import Batch


@dataclass
class WholeDeviceBorrow:
    """Lets the decode worker run on every SM while prefill has nothing to do."""

    stream: Any
    """A stream over the whole device (None on CPU)."""
    key: Hashable
    """Graph key of the decode graphs captured on `stream`."""
    prefill_idle: Callable[[], bool]


class DecodeWorker(Worker):
    """Runs decode steps (one CUDA-graph replay per step when a graph covers the batch)."""

    phase = "decode"

    def __init__(self, ctx: WorkerContext, scheduler: DecodeScheduler, runner: ModelRunner,
                 on_blocks_freed: Callable[[], None], borrow: WholeDeviceBorrow | None = None) -> None:
        super().__init__(ctx)
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
        ctx = self.ctx
        self._admit_hand_offs()
        free = ctx.book.has_pending_aborts() and self.apply_aborts(self.scheduler.abort)
        batch = self.scheduler.schedule()
        if batch.is_empty:
            if free:
                self.on_blocks_freed()
            return False
        self.num_iterations += 1
        t0 = ctx.clock.now()
        ctx.recorder.decode_started(batch.decodes, t0)
        try:
            host = self.runner.host_batch(batch)  # host-only work stays outside the launch stretch
            with self.launch_stretch() as part:
                if self.borrowing:
                    self.num_borrowed_steps += 1
                pending = self.launch_step(batch, self.borrow.key if self.borrowing else part.prefill_sms, host)
            tokens = self.wait_tokens(pending)
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

    def run_step(self, batch: Batch, graph_key: Hashable) -> list[int]:
        """`launch_step` and wait: the sampled token ids (the timing probes use it)."""
        return self.launch_step(batch, graph_key).wait()

    def launch_step(self, batch: Batch, graph_key: Hashable, host: HostBatch | None = None) -> PendingTokens:
        """Launch one decode step: a replay of the graph set of the current partition (keyed by
        its prefill SM count) when it covers the batch, else eager."""
        pending = self.runner.launch(batch, graph_key, host=host)
        if self.runner.last_run_graphed:
            self.num_graph_steps += 1
        else:
            self.num_eager_steps += 1
        return pending
