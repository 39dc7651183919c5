"""The scheduler interface shared by the simulator and the real engine.

A scheduler decides *what* runs; an executor (the simulator, or the engine's workers)
decides *how* and calls back with what it sampled::

    batch = scheduler.schedule()          # plain Batch: chunks and decode requests
    tokens = executor.run(batch)          # one token per batch.sampled_requests(), or None
    done = scheduler.update(batch, tokens)

Schedulers know nothing of tensors, sampling or clocks: the engine passes a
`StopChecker` for EOS and stop strings, and times events itself. ``tokens=None`` means
the executor only counts tokens (the simulator); ids are then not kept.

Semi-PD wires two schedulers to one `BlockAllocator`; KV blocks move with the request,
never copied, and exactly one party holds a request (and so its blocks) at a time::

        add_request                       hand-off (metadata only)
    ------------> PrefillScheduler --update()--> executor --add_request--> DecodeScheduler
                  waiting (FCFS)     returns                               inbox -> running
                  running: partially  WAITING_DECODE                       (at its next step)
                  prefilled, hold     requests, blocks                        |
                  their blocks        still attached                          | KV full: newest
                       ^                                                      | is preempted:
                       |       add_preempted (front of the queue)             | blocks freed,
                       +------------------------------------------------------+ computed := 0
                                                                              |
                  BlockAllocator (one lock): allocate(prefill chunk,          | finished:
                  keeps `watermark` free) / append_slot(decode step) / free <-+ blocks freed

Between the prefill scheduler's `update` and the decode scheduler's `add_request` the
executor holds the request (the hand-off queue), blocks attached: they are freed only
by the decode scheduler (finish, preemption) or by `abort`. Lock order: the decode
scheduler may call into the prefill scheduler (preemption) while holding its lock,
never the reverse.

`abort` frees a request's blocks at once. An executor that runs batches asynchronously
must therefore apply aborts at iteration boundaries; `update` skips requests aborted
while their batch ran.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from semipd.sched.batch import Batch
from semipd.sched.request import Request

StopChecker = Callable[[Request, int | None], str | None]
"""``stop_checker(request, token) -> finish reason or None``, called after a token is
appended (EOS, stop strings). Finishing at ``max_tokens`` needs no checker."""


@runtime_checkable
class Scheduler(Protocol):
    """What every scheduler offers an executor."""

    def add_request(self, request: Request) -> None:
        """Queue `request`. Raises ValueError if it could never fit in the KV pool."""
        ...

    def schedule(self) -> Batch:
        """The next iteration's work; may be empty (nothing to do, or no KV room)."""
        ...

    def update(self, batch: Batch, tokens: Sequence[int] | None) -> list[Request]:
        """Apply the iteration's results. `tokens` holds one id per
        ``batch.sampled_requests()`` (or None to count only). Returns the requests that
        leave this scheduler (hand-offs for prefill, finished ones for the others)."""
        ...

    def abort(self, rid: str) -> Request | None:
        """Remove request `rid` wherever it is here, free its blocks and mark it ABORTED.
        Returns it, or None if this scheduler does not hold it."""
        ...

    @property
    def num_waiting(self) -> int:
        """Requests queued and not yet holding KV blocks here."""
        ...

    @property
    def num_running(self) -> int:
        """Requests admitted here (holding KV blocks)."""
        ...

    def has_work(self) -> bool:
        """Whether any request is queued or running here."""
        ...
