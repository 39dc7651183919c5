"""The discrete-event core shared by the simulator's executors.

Time is a `VirtualClock` that jumps from event to event. Events are arrivals (read in
order from the workload, never queued), iteration ends of the GPU workers (scheduled by
the subclasses, as are allocation switches), and controller ticks every ``monitoring_interval``.
An end event carries its worker's generation number: when a worker's speed changes
mid-iteration (the other phase starts or stops, so the interference factor changes) the
end is re-scheduled under a new generation and the stale event is dropped when popped.

Lifecycle events go to the `SemiPDMetricsCollector` with explicit virtual timestamps, as
the real engine records them: arrival, prefill start (first chunk), first token and
prefill end (last chunk's iteration end), decode start (admission to a decode step),
completion; and the tokens of each decode step, in one bulk call per step
(`SemiPDMetricsCollector.record_decode_step`: the hour-long trace has ~4M tokens, too many for
one call each), which feeds the window's ITL and streaming TPOT.

Engine costs (`semipd.sim.engine_costs`): subclasses add host time to their iterations;
`frontend_s` shifts the first token and the completion the records report (the controller,
like the engine's, sees engine-side times). With `collect_itl` the gaps between each
request's tokens are kept for `itl_samples` (a replay compares them with a client's).
"""

from __future__ import annotations

import heapq
import math
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

from semipd.clock import VirtualClock
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.metrics.recorder import LifecycleRecorder
from semipd.sched import PrefillChunk, Request, RequestState
from semipd.sim.results import RequestRecord
from semipd.workload import WorkloadRequest

TICK = 0
END = 1


class SimExecutor(ABC):
    """Arrivals, ticks, request bookkeeping and the event loop; subclasses run the GPU."""

    def __init__(self, workload: Sequence[WorkloadRequest], clock: VirtualClock,
                 collector: SemiPDMetricsCollector, monitoring_interval: float,
                 on_tick: Callable[[float], None] | None = None,
                 on_progress: Callable[[float], None] | None = None) -> None:
        order = sorted(range(len(workload)), key=lambda i: (workload[i].arrival_time, i))
        self.requests = [Request(rid=str(i), num_prompt_tokens=workload[i].input_len,
                                 max_tokens=workload[i].output_len, arrival_time=workload[i].arrival_time)
                         for i in order]
        self.clock = clock
        self.collector = collector
        self.monitoring_interval = monitoring_interval
        self.on_tick = on_tick
        self.on_progress = on_progress
        n = len(self.requests)
        self.first_token: list[float | None] = [None] * n
        self.completion: list[float | None] = [None] * n
        self._index = {r.rid: k for k, r in enumerate(self.requests)}
        self.recorder = LifecycleRecorder(collector)
        self.num_done = 0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self.num_events = 0
        self._rng: random.Random | None = None
        self._noise_mu = 0.0
        self._noise_sigma = 0.0
        self.frontend_s = 0.0
        """Added to TTFT and completion in `records` (the request's way through an HTTP front end)."""
        self._last_token: list[float] | None = None
        self._itl: list[float] = []

    def collect_itl(self) -> None:
        """Keep every gap between two tokens of a request from now on (see `itl_samples`)."""
        self._last_token = [0.0] * len(self.requests)

    def itl_samples(self) -> list[float]:
        """Gaps between consecutive tokens of each request, seconds, pooled (needs `collect_itl`)."""
        return self._itl

    def set_time_noise(self, relative_std: float, seed: int) -> None:
        """Multiply every iteration time by a lognormal factor of mean 1 and this relative
        standard deviation, drawn from a generator seeded with `seed` (0: no noise)."""
        if relative_std < 0:
            raise ValueError(f"relative_std must be >= 0, got {relative_std}")
        self._rng = random.Random(seed) if relative_std > 0 else None
        self._noise_sigma = math.sqrt(math.log1p(relative_std ** 2))
        self._noise_mu = -0.5 * self._noise_sigma ** 2

    def noisy(self, seconds: float) -> float:
        """`seconds` with the configured noise applied."""
        if self._rng is None:
            return seconds
        return seconds * self._rng.lognormvariate(self._noise_mu, self._noise_sigma)

    # -- scheduling events ---------------------------------------------------------------
    def push(self, t: float, kind: int, payload: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, payload))

    @abstractmethod
    def on_arrival(self, request: Request, t: float) -> None:
        """Queue `request` (already recorded as arrived) and start work if a worker is idle."""

    @abstractmethod
    def on_end(self, payload: Any, t: float) -> None:
        """An executor event (an iteration end, say) scheduled with ``push(t, END, payload)``."""

    @abstractmethod
    def has_work(self) -> bool:
        """Whether any request is queued, running or in flight inside the executor."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """Run facts for `SimResult.extra`: iterations, busy time of each worker."""

    @abstractmethod
    def system_state(self) -> tuple[int, int]:
        """(requests running on the GPU, requests waiting for prefill) right now."""

    # -- lifecycle records ----------------------------------------------------------------
    def admit(self, request: Request, t: float, queue: Callable[[Request], None]) -> bool:
        """Record the arrival and queue; a request that can never fit is aborted."""
        self.recorder.arrival(request)
        try:
            queue(request)
        except ValueError:
            request.finish_reason = "abort"
            request.transition(RequestState.ABORTED)
            self.num_done += 1
            self.recorder.aborted(request.rid, t)
            return False
        return True

    def record_prefill_starts(self, batch_chunks: Sequence[PrefillChunk], t: float) -> None:
        """Prefill start of each request whose first chunk is in the batch (once per request)."""
        self.recorder.prefill_started((c.request for c in batch_chunks if c.start == 0), t)

    def record_prefill_done(self, request: Request, t: float) -> None:
        """After a last chunk: the first token (once; a recompute is not a first token)."""
        k = self._index[request.rid]
        if self.recorder.first_token(request, t):
            self.first_token[k] = t
            if self._last_token is not None:
                self._last_token[k] = t
        if request.is_finished:
            self.record_completion(request, t)

    def record_decode_start(self, request: Request, t: float) -> None:
        self.recorder.decode_started((request,), t)

    def record_decode_step(self, requests: Sequence[Request], t: float) -> None:
        """The tokens a decode step gave `requests` at `t` (one each), in one collector call."""
        self.recorder.decode_step(requests, t)
        last = self._last_token
        if last is not None:
            index, gaps = self._index, self._itl
            for r in requests:
                k = index[r.rid]
                gaps.append(t - last[k])
                last[k] = t

    def record_completion(self, request: Request, t: float) -> None:
        """Record the end of a finished request (once; later calls do nothing)."""
        k = self._index[request.rid]
        if self.completion[k] is not None:
            return
        self.completion[k] = t
        self.num_done += 1
        self.recorder.completed(request, t)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Simulate until every request has finished or been aborted."""
        reqs = self.requests
        n = len(reqs)
        heap = self._heap
        clock = self.clock
        ai = 0
        if self.on_tick is not None and n:
            self.push(reqs[0].arrival_time + self.monitoring_interval, TICK)
        while True:
            next_arrival = reqs[ai].arrival_time if ai < n else math.inf
            if heap and heap[0][0] <= next_arrival:
                t, _, kind, payload = heapq.heappop(heap)
            elif ai < n:
                t, kind, payload = next_arrival, -1, None
            else:
                break
            if t > clock.now():
                clock.set(t)
            self.num_events += 1
            if kind == END:
                self.on_end(payload, t)
            elif kind == -1:
                r = reqs[ai]
                ai += 1
                self.on_arrival(r, t)
            else:
                self.on_tick(t)  # type: ignore[misc]
                if self.on_progress is not None:
                    self.on_progress(self.num_done / n)
                if ai < n or self.has_work():
                    self.push(t + self.monitoring_interval, TICK)
        if self.on_progress is not None and n:
            self.on_progress(1.0)

    def records(self) -> list[RequestRecord]:
        """One record per workload request, in workload order."""
        out: list[RequestRecord | None] = [None] * len(self.requests)
        shift = self.frontend_s
        for k, r in enumerate(self.requests):
            ft, done = self.first_token[k], self.completion[k]
            ft = None if ft is None else ft + shift
            done = None if done is None else done + shift
            finished = done is not None
            ttft = (ft - r.arrival_time) * 1000.0 if ft is not None else None
            tpot = None
            if finished and ft is not None and r.num_output_tokens > 1:
                tpot = (done - ft) * 1000.0 / (r.num_output_tokens - 1)
            out[int(r.rid)] = RequestRecord(r.rid, r.arrival_time, ft, done, r.num_prompt_tokens,
                                            r.num_output_tokens, ttft, tpot, finished,
                                            r.num_preemptions)
        return out  # type: ignore[return-value]
