"""`UnifiedScheduler`: the baseline Semi-PD is compared against (vLLM v1 / SGLang style).

One queue, the whole GPU, mixed batches with chunked prefill, as vLLM v1 schedules them:

1. every running decode gets one token (decode first, so ongoing streams never stall);
   a decode that cannot get a KV slot preempts the newest running request (recompute);
2. running requests still prefilling (a chunked prompt) continue within the remaining
   token budget;
3. waiting requests are admitted in FCFS order while the budget, ``max_num_seqs`` and
   the KV pool (leaving the watermark free) allow; the last one admitted may be chunked.
   The queue is never skipped. Preempted requests re-enter at the front.

Overlapped scheduling: an executor that launches step N+1 before it reads step N's tokens
calls `advance` right after each launch instead of `update`, and `resolve` once the tokens
are back. `advance` counts every sampled request's token as ``PENDING_TOKEN`` (so the next
`schedule` plans from the state after the batch) and finishes requests that reach
``max_tokens``; `resolve` fills the tokens in and applies the stop checker, so a request that
stops on a token may have been scheduled once more: that step's token is dropped::

    schedule N+1 -> launch N+1 -> resolve N (tokens of N; stops) -> advance N+1 (pending tokens)
                                  a request in N+1 that stops at N is skipped by advance N+1: the
                                  token step N+1 computes for it is never read

Blocks freed here (finish, abort, preemption) may still be read or written by the step in
flight; that is safe only when every step runs on one CUDA stream (the next user of a block
runs after it), which is how the unified engine runs.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence

from semipd.sched import ops
from semipd.sched.base import StopChecker
from semipd.sched.batch import AdvancedBatch, Batch, PrefillChunk
from semipd.sched.block_allocator import BlockAllocator
from semipd.sched.config import UnifiedSchedulerConfig
from semipd.sched.request import PENDING_TOKEN, Request, RequestState

_DECODE_READY = (RequestState.WAITING_DECODE, RequestState.DECODING)


class UnifiedScheduler:
    """Decode-first chunked-prefill scheduler over one KV pool. `schedule` and `update`
    alternate; `add_request` and `abort` may come from other threads."""

    def __init__(self, config: UnifiedSchedulerConfig, allocator: BlockAllocator,
                 stop_checker: StopChecker | None = None) -> None:
        self.config = config
        self.allocator = allocator
        self.stop_checker = stop_checker
        self._waiting: deque[Request] = deque()
        self._running: list[Request] = []
        """Admitted requests (prefilling or decoding) in admission order: the back is the newest."""
        self._running_tokens = 0
        self._lock = threading.Lock()

    def add_request(self, request: Request) -> None:
        """Queue a new request at the back (FCFS). Raises ValueError if it can never fit."""
        if request.state is not RequestState.WAITING_PREFILL:
            raise ValueError(f"request {request.rid} is {request.state.name}, expected WAITING_PREFILL")
        ops.check_fits(self.allocator, request)
        with self._lock:
            self._waiting.append(request)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_decode_tokens(self) -> int:
        """Context tokens over the requests that decode in the next step (their KV is read)."""
        return self._running_tokens

    def has_work(self) -> bool:
        return bool(self._waiting or self._running)

    def schedule(self) -> Batch:
        """Next mixed batch: decodes first, then prefill chunks under the remaining budget."""
        budget = self.config.max_num_batched_tokens
        decodes: list[Request] = []
        chunks: list[PrefillChunk] = []
        with self._lock:
            running = self._running
            # 1. Decodes, oldest first; preempt from the back when the pool is full.
            i = 0
            while i < len(running) and budget > 0:
                r = running[i]
                if r.state not in _DECODE_READY:
                    i += 1
                    continue
                if not self.allocator.append_slot(r):
                    victim = running.pop()
                    self._preempt(victim)
                    continue
                if r.state is RequestState.WAITING_DECODE:
                    r.transition(RequestState.DECODING)
                    self._running_tokens += r.num_tokens
                decodes.append(r)
                budget -= 1
                i += 1
            # 2. Partially prefilled running requests, then 3. the queue.
            blocked = False
            for r in running:
                if r.state is not RequestState.PREFILLING:
                    continue
                if budget == 0:
                    blocked = True
                    break
                n = self._chunk(r, budget, chunks)
                budget -= n
                if n == 0 or r.remaining_prefill_tokens > n:
                    blocked = True
                    break
            while not blocked and self._waiting and budget > 0 and len(running) < self.config.max_num_seqs:
                r = self._waiting[0]
                n = self._chunk(r, budget, chunks)
                if n == 0:
                    break
                self._waiting.popleft()
                r.transition(RequestState.PREFILLING)
                running.append(r)
                budget -= n
                blocked = r.remaining_prefill_tokens > n
        return Batch(prefills=chunks, decodes=decodes)

    def _chunk(self, r: Request, budget: int, chunks: list[PrefillChunk]) -> int:
        n = ops.allocate_chunk(self.allocator, r, min(r.remaining_prefill_tokens, budget))
        if n:
            chunks.append(PrefillChunk(r, r.num_computed_tokens, n, n == r.remaining_prefill_tokens))
        return n

    def _preempt(self, victim: Request) -> None:
        if victim.state is RequestState.DECODING:
            self._running_tokens -= victim.num_tokens
        ops.preempt(victim, self.allocator)
        self._waiting.appendleft(victim)

    def update(self, batch: Batch, tokens: Sequence[int] | None) -> list[Request]:
        """Apply a mixed batch's results; returns the requests that finished (blocks freed)."""
        checker = self.stop_checker
        with self._lock:
            _, finished, ti = ops.apply_prefill_chunks(batch.prefills, tokens, checker, self.allocator)
            added = 0
            for r in batch.decodes:
                token = tokens[ti] if tokens is not None else None
                ti += 1
                if r.state is not RequestState.DECODING:
                    continue
                added += 1
                reason = ops.decode_step_and_check(r, token, checker)
                if reason is not None:
                    ops.finish(r, reason, self.allocator)
                    added -= r.num_tokens
                    finished.append(r)
            self._running_tokens += added
            if finished:
                self._running = [r for r in self._running if not r.is_finished]
        return finished

    def advance(self, batch: Batch) -> AdvancedBatch:
        """The executor launched `batch` and reads its tokens later: count each sampled request's token
        as pending now; requests that reach ``max_tokens`` finish (blocks freed; their last token still
        comes through `resolve`)."""
        slots: list[tuple[Request, int]] = []
        with self._lock:
            added = 0
            any_finished = False
            for c in batch.prefills:
                r = c.request
                if r.state is not RequestState.PREFILLING:
                    if c.is_last:
                        slots.append((r, -1))
                    continue
                r.num_computed_tokens = c.end
                if not c.is_last:
                    continue
                r.append_token(PENDING_TOKEN)
                slots.append((r, len(r.output_token_ids) - 1))
                if r.num_output_tokens >= r.max_tokens:
                    ops.finish(r, "length", self.allocator)
                    any_finished = True
                else:
                    r.transition(RequestState.WAITING_DECODE)
            for r in batch.decodes:
                if r.state is not RequestState.DECODING:
                    slots.append((r, -1))
                    continue
                at_max = r.complete_decode_step(PENDING_TOKEN)
                slots.append((r, len(r.output_token_ids) - 1))
                added += 1
                if at_max:
                    ops.finish(r, "length", self.allocator)
                    added -= r.num_tokens
                    any_finished = True
            self._running_tokens += added
            if any_finished:
                self._running = [r for r in self._running if not r.is_finished]
        return AdvancedBatch(batch, slots)

    def resolve(self, advanced: AdvancedBatch, tokens: Sequence[int]) -> list[Request]:
        """The tokens of an advanced batch: fill in each pending token and run the stop checker. Returns
        the requests that got their token here (in order); those that stopped on it are finished
        (blocks freed). Requests aborted or preempted since are skipped. Call it before advancing the
        next batch: a request that stops here and is in that batch then gets no pending token there."""
        with self._lock:
            got, stopped = ops.resolve_pending(advanced.slots, tokens, self.stop_checker)
            for r, reason in stopped:
                if r.state is RequestState.DECODING:
                    self._running_tokens -= r.num_tokens
                ops.finish(r, reason, self.allocator)
            if stopped:
                self._running = [r for r in self._running if not r.is_finished]
        return got

    def abort(self, rid: str) -> Request | None:
        """Remove `rid` from the queue or the running set, free its blocks, mark it ABORTED."""
        with self._lock:
            for r in self._waiting:
                if r.rid == rid:
                    self._waiting.remove(r)
                    ops.abort(r, self.allocator)
                    return r
            for r in self._running:
                if r.rid == rid:
                    self._running.remove(r)
                    if r.state is RequestState.DECODING:
                        self._running_tokens -= r.num_tokens
                    ops.abort(r, self.allocator)
                    return r
        return None
