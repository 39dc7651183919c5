"""Semi-PD on the simulated GPU: a prefill worker and a decode worker run at the same time,
each on its SM share, over one `BlockAllocator`.

Each worker runs one iteration at a time. An iteration's length comes from the
`PerfModel` on the worker's SMs, as *work* measured in seconds-when-alone; it progresses
at rate 1 while the other worker is idle and at 1 / slowdown while the other one is busy
(``perf.interference(prefill_sms, decode_sms)``), so an iteration that overlaps the other
phase only in part is slowed only for that part::

    prefill  |====== iteration (rate 1/fp) ======|--- rate 1 ---|
    decode   |=step=|=step=|=step=|     idle      |=step=|
                                  ^ decode goes idle: prefill's end is re-timed

Hand-off: a request whose last chunk completes gets its first token at the prefill
iteration's end (TTFT) and joins decode at the decode worker's next step boundary (at
once if decode is idle). SM switches take effect per worker at its next iteration start
(`SimulatedResourceManager`).

Engine costs: each iteration starts with ``host_s`` of host work during which its GPU work has
not begun (plus ``host_per_seq_s`` per sequence of a decode step, and ``prefill_host_per_seq_s``
per sequence decoding when a prefill iteration starts); the interference factors slow the GPU
part only (a worker in its host part still counts as busy when the other's speed is set: a
simplification). With ``decode_borrow`` (the engine's default) a decode step that
starts while the prefill scheduler has nothing queued or running runs on every SM; prefill work
arriving meanwhile starts at once on its own SMs, beside that step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from semipd.clock import VirtualClock
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.perf.model import PerfModel
from semipd.sched import Batch, DecodeScheduler, PrefillScheduler, Request, RequestState
from semipd.sim.executor import END, SimExecutor
from semipd.sim.resource_manager import SimulatedResourceManager
from semipd.workload import WorkloadRequest


class _Worker:
    """One phase's GPU worker: its running iteration and how fast it progresses."""

    __slots__ = ("name", "batch", "work", "rate", "last", "start", "gen", "sms", "busy_time", "iterations",
                 "borrowed")

    def __init__(self, name: str, sms: int) -> None:
        self.name = name
        self.batch: Batch | None = None
        self.work = 0.0
        """Remaining work of the running iteration, seconds at rate 1."""
        self.rate = 1.0
        self.last = 0.0
        """When `work` was last brought up to date (after the iteration's host part: GPU work starts then)."""
        self.start = 0.0
        self.gen = 0
        self.sms = sms
        self.busy_time = 0.0
        self.iterations = 0
        self.borrowed = 0
        """Iterations run on every SM (decode borrowing idle prefill SMs)."""

    @property
    def busy(self) -> bool:
        return self.batch is not None


class SemiPDExecutor(SimExecutor):
    """Runs `PrefillScheduler` and `DecodeScheduler` concurrently on the SM split managed by `rm`."""

    def __init__(self, workload: Sequence[WorkloadRequest], clock: VirtualClock,
                 collector: SemiPDMetricsCollector, monitoring_interval: float, perf: PerfModel,
                 prefill: PrefillScheduler, decode: DecodeScheduler, rm: SimulatedResourceManager,
                 on_tick: Callable[[float], None] | None = None,
                 on_progress: Callable[[float], None] | None = None, *, host_s: float = 0.0,
                 host_per_seq_s: float = 0.0, prefill_host_per_seq_s: float = 0.0,
                 decode_borrow: bool = False) -> None:
        super().__init__(workload, clock, collector, monitoring_interval, on_tick, on_progress)
        self.perf = perf
        self.host_s = host_s
        self.host_per_seq_s = host_per_seq_s
        self.prefill_host_per_seq_s = prefill_host_per_seq_s
        self.decode_borrow = decode_borrow
        self.prefill = prefill
        self.decode = decode
        self.rm = rm
        self.p = _Worker("prefill", rm.current_sms("prefill"))
        self.d = _Worker("decode", rm.current_sms("decode"))
        self._handoffs: list[Request] = []
        self._interference: dict[tuple[int, int], tuple[float, float]] = {}
        self._switch_due: float | None = None

    def has_work(self) -> bool:
        return self.p.busy or self.d.busy or self.prefill.has_work() or self.decode.has_work()

    def stats(self) -> dict[str, float | int]:
        return {"prefill_iterations": self.p.iterations, "decode_steps": self.d.iterations,
                "decode_borrowed_steps": self.d.borrowed,
                "prefill_busy_s": self.p.busy_time, "decode_busy_s": self.d.busy_time}

    def system_state(self) -> tuple[int, int]:
        pre, dec = self.prefill, self.decode
        return pre.num_running + dec.num_running + dec.num_waiting, pre.num_waiting

    def on_arrival(self, request: Request, t: float) -> None:
        if self.admit(request, t, self.prefill.add_request) and not self.p.busy:
            self._start_prefill(t)

    def on_end(self, payload: tuple[_Worker, int] | None, t: float) -> None:
        """An iteration end ``(worker, generation)``, or None: a pending SM switch fell due."""
        if payload is None:
            self._switch(t)
            return
        w, gen = payload
        if gen != w.gen:
            return  # re-timed: a later event carries this iteration's end
        batch = w.batch
        assert batch is not None
        w.batch = None
        w.busy_time += t - w.start
        if w is self.p:
            self._prefill_done(batch, t)
        else:
            self._decode_done(batch, t)

    def _switch(self, t: float) -> None:
        """Idle workers are at a boundary: they move to the new split now."""
        self._switch_due = None
        for w in (self.p, self.d):
            if not w.busy:
                w.sms = self.rm.phase_sms(w.name)

    def note_reallocation(self) -> None:
        """Call after the controller may have requested a switch: schedules its due event."""
        due = self.rm.pending_due_time()
        if due is not None and due != self._switch_due:
            self._switch_due = due
            self.push(max(due, self.clock.now()), END, None)

    # -- prefill worker ------------------------------------------------------------------
    def _start_prefill(self, t: float) -> None:
        self.p.sms = self.rm.phase_sms("prefill")
        batch = self.prefill.schedule()
        if batch.is_empty:
            return
        chunks = batch.prefills
        self.record_prefill_starts(chunks, t)
        work = self.noisy(self.perf.prefill_time([(c.num_tokens, c.end) for c in chunks], self.p.sms))
        host = self.host_s + self.decode.num_running * self.prefill_host_per_seq_s
        self._begin(self.p, batch, work, t, host)

    def _prefill_done(self, batch: Batch, t: float) -> None:
        handoffs = self.prefill.update(batch, None)
        for c in batch.prefills:
            if c.is_last and c.request.state is not RequestState.ABORTED:
                self.record_prefill_done(c.request, t)
        for r in handoffs:
            self.decode.add_request(r)
        self._handoffs.extend(handoffs)
        self._start_prefill(t)
        if not self.d.busy:
            self._start_decode(t)
        self._retime(self.d, t)

    # -- decode worker -------------------------------------------------------------------
    def _start_decode(self, t: float) -> None:
        self.d.sms = self.rm.phase_sms("decode")
        waiting_before = self.prefill.num_waiting
        batch = self.decode.schedule()
        if self._handoffs:
            pending = []
            for r in self._handoffs:
                if r.state is RequestState.DECODING:
                    self.record_decode_start(r, t)
                elif r.state is RequestState.WAITING_DECODE:
                    pending.append(r)
            self._handoffs = pending
        if self.prefill.num_waiting != waiting_before and not self.p.busy:
            self._start_prefill(t)  # preempted requests came back to the prefill queue
        if batch.is_empty:
            return
        if self.decode_borrow and not self.p.busy and not self.prefill.has_work():
            self.d.sms = self.perf.total_sms
            self.d.borrowed += 1
        n = len(batch.decodes)
        work = self.noisy(self.perf.decode_time(n, self.decode.num_running_tokens, self.d.sms))
        self._begin(self.d, batch, work, t, self.host_s + n * self.host_per_seq_s)

    def _decode_done(self, batch: Batch, t: float) -> None:
        finished = self.decode.update(batch, None)
        self.record_decode_step(batch.decodes, t)
        for r in finished:
            self.record_completion(r, t)
        self._start_decode(t)
        if not self.p.busy and self.prefill.has_work():
            self._start_prefill(t)  # freed blocks may admit the queue's head
        self._retime(self.p, t)

    # -- timing ----------------------------------------------------------------------------
    def _slowdowns(self) -> tuple[float, float]:
        key = (self.p.sms, self.d.sms)
        f = self._interference.get(key)
        if f is None:
            f = self._interference[key] = self.perf.interference(*key)
        return f

    def _rate(self, w: _Worker) -> float:
        other = self.d if w is self.p else self.p
        if not other.busy:
            return 1.0
        fp, fd = self._slowdowns()
        return 1.0 / (fp if w is self.p else fd)

    def _begin(self, w: _Worker, batch: Batch, work: float, t: float, host: float) -> None:
        """Start an iteration at `t`: `host` seconds of host work, then `work` seconds of GPU work (alone)."""
        w.batch = batch
        w.work = work
        w.start = t
        w.last = t + host
        w.rate = self._rate(w)
        w.gen += 1
        w.iterations += 1
        self.push(w.last + work / w.rate, END, (w, w.gen))
        self._retime(self.d if w is self.p else self.p, t)

    def _retime(self, w: _Worker, t: float) -> None:
        """Bring `w`'s running iteration up to date with the other worker's state at `t`."""
        if not w.busy:
            return
        rate = self._rate(w)
        if rate == w.rate:
            return
        if t > w.last:  # in its GPU part: the work done so far went at the old rate
            w.work -= (t - w.last) * w.rate
            w.last = t
        w.rate = rate
        w.gen += 1
        self.push(w.last + max(w.work, 0.0) / rate, END, (w, w.gen))
