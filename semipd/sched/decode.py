"""`DecodeScheduler`: the Semi-PD decode worker's scheduler.

Continuous batching: hand-offs wait in an inbox and join the running batch at the next
step boundary (up to ``max_decode_batch``). Each step grows every running request by
one KV slot; when the pool is exhausted the newest request (inbox back first, then the
running batch's back) is preempted back to the prefill queue (recompute) instead of
failing. Finished requests free their blocks in `update`.

Growth needs a new block only once every ``block_size`` steps, so the scheduler keeps a
calendar: when a request gets room, it is filed under the step at which that room runs
out, and each step touches only the requests filed under it (plus new admissions) rather
than the whole batch.

Overlapped scheduling (the decode worker launches step N+1 before reading step N's tokens):
`advance` and `resolve` replace `update`, as in `UnifiedScheduler`. Blocks freed meanwhile may
still be read by a launched step while the prefill stream could take them at once, so the
worker sets ``fence`` to the last launched step and every free parks the blocks behind it
(`BlockAllocator.free`) until the worker releases that fence once the step is done.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence

from semipd.sched import ops
from semipd.sched.base import StopChecker
from semipd.sched.batch import AdvancedBatch, Batch
from semipd.sched.block_allocator import BlockAllocator
from semipd.sched.config import DecodeSchedulerConfig
from semipd.sched.request import PENDING_TOKEN, Request, RequestState


class DecodeScheduler:
    """Builds decode steps over the running batch.

    `on_preempt(request)` receives each preempted request (PREEMPTED, no blocks); in
    Semi-PD it is ``prefill_scheduler.add_preempted``. Thread-safe: `add_request` (the
    hand-off, from the prefill side) may run concurrently with `schedule`/`update`."""

    def __init__(self, config: DecodeSchedulerConfig, allocator: BlockAllocator,
                 on_preempt: Callable[[Request], None], stop_checker: StopChecker | None = None) -> None:
        self.config = config
        self.allocator = allocator
        self.on_preempt = on_preempt
        self.stop_checker = stop_checker
        self._inbox: deque[Request] = deque()
        self._running: list[Request] = []
        self._running_tokens = 0
        self._step = 0
        self._due: dict[int, list[Request]] = {}
        """Step number -> requests whose KV room runs out at that step."""
        self._due_step: dict[str, int] = {}
        """rid -> the step it is filed under (older entries for it are stale)."""
        self._lock = threading.Lock()
        self.fence: int | None = None
        """When set, blocks freed here wait behind this fence (`BlockAllocator.free`)."""

    def add_request(self, request: Request) -> None:
        """Hand-off: a prefilled request (WAITING_DECODE, blocks attached) joins at the next step."""
        if request.state is not RequestState.WAITING_DECODE:
            raise ValueError(f"request {request.rid} is {request.state.name}, expected WAITING_DECODE")
        with self._lock:
            self._inbox.append(request)

    @property
    def num_waiting(self) -> int:
        """Hand-offs not yet in the running batch (they hold blocks already)."""
        return len(self._inbox)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_running_tokens(self) -> int:
        """Context tokens over the running batch (the KV a decode step reads)."""
        return self._running_tokens

    def has_work(self) -> bool:
        return bool(self._inbox or self._running)

    def schedule(self) -> Batch:
        """Admit hand-offs, grow every running request by one slot (preempting the newest
        on exhaustion), and return the step's batch."""
        with self._lock:
            running = self._running
            step = self._step
            grow: list[Request] = []
            while self._inbox and len(running) < self.config.max_decode_batch:
                r = self._inbox.popleft()
                r.transition(RequestState.DECODING)
                running.append(r)
                self._running_tokens += r.num_tokens
                grow.append(r)
            due_step = self._due_step
            grow.extend(r for r in self._due.pop(step, ()) if due_step.get(r.rid) == step)
            for r in grow:
                while r.state is RequestState.DECODING and not self.allocator.append_slot(r):
                    self._preempt(self._inbox.pop() if self._inbox else running.pop())
                if r.state is RequestState.DECODING:
                    # Room for n tokens now; at step + j the request holds num_tokens + j.
                    due = step + len(r.block_ids) * self.allocator.block_size - r.num_tokens + 1
                    due_step[r.rid] = due
                    self._due.setdefault(due, []).append(r)
            self._step = step + 1
            return Batch(decodes=list(running))

    def _preempt(self, victim: Request) -> None:
        if victim.state is RequestState.DECODING:
            self._running_tokens -= victim.num_tokens
        self._due_step.pop(victim.rid, None)
        ops.preempt(victim, self.allocator, self.fence)
        self.on_preempt(victim)

    def update(self, batch: Batch, tokens: Sequence[int] | None) -> list[Request]:
        """Append each request's token; finish those at ``max_tokens`` or stopped by the
        checker (blocks freed). Returns the finished requests."""
        finished: list[Request] = []
        offset = sum(1 for c in batch.prefills if c.is_last)
        checker = self.stop_checker
        decoding = RequestState.DECODING
        with self._lock:
            added = 0
            for k, r in enumerate(batch.decodes):
                if r.state is not decoding:
                    continue  # aborted while the step ran
                added += 1
                token = tokens[offset + k] if tokens is not None else None
                if checker is None:  # the common case, inlined: one call per token
                    reason = "length" if r.complete_decode_step(token) else None
                else:
                    reason = ops.decode_step_and_check(r, token, checker)
                if reason is not None:
                    ops.finish(r, reason, self.allocator, self.fence)
                    self._due_step.pop(r.rid, None)
                    added -= r.num_tokens
                    finished.append(r)
            self._running_tokens += added
            if finished:
                self._running = [r for r in self._running if r.state is decoding]
        return finished

    def advance(self, batch: Batch) -> AdvancedBatch:
        """The worker launched `batch` and reads its tokens later: count each request's token as
        pending; those that reach ``max_tokens`` finish (blocks behind the fence)."""
        slots: list[tuple[Request, int]] = []
        decoding = RequestState.DECODING
        with self._lock:
            added = 0
            finished = False
            for r in batch.decodes:
                if r.state is not decoding:
                    slots.append((r, -1))
                    continue
                at_max = r.complete_decode_step(PENDING_TOKEN)
                slots.append((r, len(r.output_token_ids) - 1))
                added += 1
                if at_max:
                    ops.finish(r, "length", self.allocator, self.fence)
                    self._due_step.pop(r.rid, None)
                    added -= r.num_tokens
                    finished = True
            self._running_tokens += added
            if finished:
                self._running = [r for r in self._running if r.state is decoding]
        return AdvancedBatch(batch, slots)

    def resolve(self, advanced: AdvancedBatch, tokens: Sequence[int]) -> list[Request]:
        """Fill in an advanced batch's tokens and run the stop checker (see `UnifiedScheduler.resolve`);
        returns the requests that got their token. Stopped ones finish (blocks behind the fence)."""
        with self._lock:
            got, stopped = ops.resolve_pending(advanced.slots, tokens, self.stop_checker)
            for r, reason in stopped:
                self._running_tokens -= r.num_tokens
                self._due_step.pop(r.rid, None)
                ops.finish(r, reason, self.allocator, self.fence)
            if stopped:
                self._running = [r for r in self._running if r.state is RequestState.DECODING]
        return got

    def abort(self, rid: str) -> Request | None:
        """Remove `rid` from the inbox or the running batch, free its blocks, mark it ABORTED."""
        with self._lock:
            for r in self._inbox:
                if r.rid == rid:
                    self._inbox.remove(r)
                    ops.abort(r, self.allocator, self.fence)
                    return r
            for r in self._running:
                if r.rid == rid:
                    self._running.remove(r)
                    self._running_tokens -= r.num_tokens
                    self._due_step.pop(rid, None)
                    ops.abort(r, self.allocator, self.fence)
                    return r
        return None
