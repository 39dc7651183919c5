"""`PrefillScheduler`: the Semi-PD prefill worker's scheduler.

FCFS with a token budget per iteration. A prompt longer than the budget (or than the
free KV room) is chunked: the request stays *running* here, holding its blocks, and its
next chunk goes first in the following iteration. The queue is never skipped: if the
head cannot get blocks, nothing behind it is admitted (no starvation of long prompts).
Preempted requests (from the decode scheduler) re-enter at the front of the queue.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from semipd.sched import ops
from semipd.sched.base import StopChecker
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.block_allocator import BlockAllocator
from semipd.sched.config import PrefillSchedulerConfig
from semipd.sched.request import Request, RequestState


class PrefillScheduler:
    """Builds prefill batches; `update` hands finished prefills to decode.

    Thread-safe: `add_request` (server thread), `add_preempted` (decode worker) and
    `schedule`/`update` (prefill worker) may run concurrently. `schedule` and `update`
    alternate: one batch is in flight at a time."""

    def __init__(self, config: PrefillSchedulerConfig, allocator: BlockAllocator,
                 stop_checker: StopChecker | None = None) -> None:
        self.config = config
        self.allocator = allocator
        self.stop_checker = stop_checker
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        self._lock = threading.Lock()

    # -- queue -----------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        """Queue a new request at the back (FCFS). Raises ValueError if it can never fit."""
        if request.state is not RequestState.WAITING_PREFILL:
            raise ValueError(f"request {request.rid} is {request.state.name}, expected WAITING_PREFILL")
        ops.check_fits(self.allocator, request)
        with self._lock:
            self._waiting.append(request)

    def add_preempted(self, request: Request) -> None:
        """Queue a preempted request at the front: it is older than anything waiting."""
        if request.state is not RequestState.PREEMPTED or request.block_ids:
            raise ValueError(f"request {request.rid} must be PREEMPTED and hold no blocks")
        with self._lock:
            self._waiting.appendleft(request)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def waiting_tokens(self) -> int:
        """Prefill tokens still to compute, over queued and partially prefilled requests."""
        with self._lock:
            return sum(r.remaining_prefill_tokens for r in self._running) + sum(
                r.remaining_prefill_tokens for r in self._waiting)

    # -- iteration -------------------------------------------------------------------
    def schedule(self) -> Batch:
        """Next prefill batch: running (partial) requests first, then the queue in order,
        within ``max_prefill_tokens`` and ``max_prefill_seqs``; blocks allocated for each chunk."""
        budget = self.config.max_prefill_tokens
        max_seqs = self.config.max_prefill_seqs
        chunks: list[PrefillChunk] = []
        with self._lock:
            for r in self._running:
                if budget == 0 or len(chunks) == max_seqs:
                    break
                want = min(r.remaining_prefill_tokens, budget)
                n = ops.allocate_chunk(self.allocator, r, want)
                if n == 0:
                    break
                chunks.append(PrefillChunk(r, r.num_computed_tokens, n, n == r.remaining_prefill_tokens))
                budget -= n
                if n < want:
                    break
            else:
                while self._waiting and budget > 0 and len(chunks) < max_seqs:
                    r = self._waiting[0]
                    want = min(r.remaining_prefill_tokens, budget)
                    n = ops.allocate_chunk(self.allocator, r, want)
                    if n == 0:
                        break
                    self._waiting.popleft()
                    r.transition(RequestState.PREFILLING)
                    self._running.append(r)
                    chunks.append(PrefillChunk(r, r.num_computed_tokens, n, n == r.remaining_prefill_tokens))
                    budget -= n
                    if n < want:
                        break
        return Batch(prefills=chunks)

    def update(self, batch: Batch, tokens: Sequence[int] | None) -> list[Request]:
        """Record the chunks as computed; a last chunk's request gets its sampled token and
        is returned for hand-off (state WAITING_DECODE, blocks attached). A request that
        finishes on that token (``max_tokens`` 1, or the stop checker) is FINISHED here,
        its blocks freed, and not returned: check ``request.is_finished``."""
        with self._lock:
            handoffs, _, _ = ops.apply_prefill_chunks(batch.prefills, tokens, self.stop_checker, self.allocator)
            self._running = [r for r in self._running if r.state is RequestState.PREFILLING]
        return handoffs

    def abort(self, rid: str) -> Request | None:
        """Remove `rid` from the queue or the running set, free its blocks, mark it ABORTED."""
        with self._lock:
            for group in (self._waiting, self._running):
                for r in group:
                    if r.rid == rid:
                        group.remove(r)
                        ops.abort(r, self.allocator)
                        return r
        return None
