"""The unified baseline on the simulated GPU: one worker runs `UnifiedScheduler`'s mixed
batches (decodes plus chunked prefill) on the whole GPU, timed by ``perf.mixed_time``.

A request whose last prefill chunk completes gets its first token at that batch's end
and decodes from the next batch on (no hand-off: decode start = first token). Each batch
starts with ``host_s`` of host work, plus ``host_per_seq_s`` per sequence in it (engine costs).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from semipd.clock import VirtualClock
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.perf.model import PerfModel
from semipd.sched import Batch, Request, RequestState, UnifiedScheduler
from semipd.sim.executor import END, SimExecutor
from semipd.workload import WorkloadRequest


class UnifiedExecutor(SimExecutor):
    """One GPU worker, one scheduler, mixed batches."""

    def __init__(self, workload: Sequence[WorkloadRequest], clock: VirtualClock,
                 collector: SemiPDMetricsCollector, monitoring_interval: float, perf: PerfModel,
                 scheduler: UnifiedScheduler, on_tick: Callable[[float], None] | None = None,
                 on_progress: Callable[[float], None] | None = None, *, host_s: float = 0.0,
                 host_per_seq_s: float = 0.0) -> None:
        super().__init__(workload, clock, collector, monitoring_interval, on_tick, on_progress)
        self.perf = perf
        self.host_s = host_s
        self.host_per_seq_s = host_per_seq_s
        self.scheduler = scheduler
        self._batch: Batch | None = None
        self._start = 0.0
        self.busy_time = 0.0
        self.iterations = 0

    def has_work(self) -> bool:
        return self._batch is not None or self.scheduler.has_work()

    def stats(self) -> dict[str, float | int]:
        return {"iterations": self.iterations, "busy_s": self.busy_time}

    def system_state(self) -> tuple[int, int]:
        return self.scheduler.num_running, self.scheduler.num_waiting

    def on_arrival(self, request: Request, t: float) -> None:
        if self.admit(request, t, self.scheduler.add_request) and self._batch is None:
            self._start_batch(t)

    def on_end(self, payload: None, t: float) -> None:
        batch = self._batch
        assert batch is not None
        self._batch = None
        self.busy_time += t - self._start
        finished = self.scheduler.update(batch, None)
        if batch.decodes:
            self.record_decode_step(batch.decodes, t)
        for c in batch.prefills:
            r = c.request
            if c.is_last and r.state is not RequestState.ABORTED:
                self.record_prefill_done(r, t)
                if not r.is_finished:
                    self.record_decode_start(r, t)
        for r in finished:
            self.record_completion(r, t)  # once: those finished by their first token are recorded
        self._start_batch(t)

    def _start_batch(self, t: float) -> None:
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return
        self.record_prefill_starts(batch.prefills, t)
        duration = self.noisy(self.perf.mixed_time([(c.num_tokens, c.end) for c in batch.prefills],
                                                   len(batch.decodes),
                                                   self.scheduler.num_decode_tokens if batch.decodes else 0))
        self._batch = batch
        self._start = t
        self.iterations += 1
        host = self.host_s + (len(batch.decodes) + len(batch.prefills)) * self.host_per_seq_s
        self.push(t + host + duration, END)
