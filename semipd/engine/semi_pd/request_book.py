"""`RequestBook`: the Semi-PD engine's thread-safe record of live requests and their outputs.

Three kinds of threads meet here: the caller (``add_request``, ``abort``, ``step``) and the
prefill and decode workers (which publish outputs and failures). One condition variable
guards everything:

- ``live``: requests added and not yet finished, failed or aborted;
- the outbox: `TokenDelta`s published by the workers, taken by ``step()``;
- failures: one `StepError` per failed worker batch, raised by ``step()``;
- pending aborts: ids aborted by the caller that a worker still holds. `abort` only marks
  the id (and drops it from ``live`` at once, so no output follows); the worker holding the
  request frees its blocks at its next iteration boundary (``sched/base.py``: blocks must
  not be freed under a batch in flight) and then calls `abort_done`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from semipd.engine.core.messages import TokenDelta
from semipd.engine.errors import StepError
from semipd.sched.request import Request


class RequestBook:
    """Live requests, the outbox, failures and pending aborts (see the module docstring)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._live: dict[str, Request] = {}
        self._outbox: list[TokenDelta] = []
        self._failures: list[StepError] = []
        self._aborts: set[str] = set()
        self._aborted_since_take: set[str] = set()

    # -- caller side ----------------------------------------------------------------------
    def add(self, request: Request) -> None:
        """Register a new request; ValueError for an id that is live (or still being aborted)."""
        with self._cond:
            if request.rid in self._live or request.rid in self._aborts:
                raise ValueError(f"request id {request.rid!r} is already running")
            self._live[request.rid] = request

    def abort(self, rid: str) -> bool:
        """Drop `rid` from the live set and mark it for its worker; False for an unknown id."""
        with self._cond:
            if self._live.pop(rid, None) is None:
                return False
            self._aborts.add(rid)
            self._aborted_since_take.add(rid)
            self._cond.notify_all()
            return True

    def take(self, timeout: float) -> list[TokenDelta]:
        """The outputs published since the last call, waiting up to `timeout` s when there
        are none. Raises the oldest worker failure first (the outputs stay for the next call).
        Outputs of requests aborted since they were published are dropped (a request that
        finished meanwhile keeps all of its outputs)."""
        with self._cond:
            if not self._outbox and not self._failures:
                self._cond.wait(timeout)
            if self._failures:
                raise self._failures.pop(0)
            outputs, self._outbox = self._outbox, []
            aborted, self._aborted_since_take = self._aborted_since_take, set()
            if not aborted:
                return outputs
            return [o for o in outputs if o.rid not in aborted]

    def interrupt(self) -> None:
        """End a `take` that is waiting (it returns what it has, possibly nothing)."""
        with self._cond:
            self._cond.notify_all()

    # -- worker side ----------------------------------------------------------------------
    def is_live(self, rid: str) -> bool:
        return rid in self._live

    def has_pending_aborts(self) -> bool:
        return bool(self._aborts)

    def pending_aborts(self) -> list[str]:
        with self._cond:
            return list(self._aborts)

    def abort_done(self, rid: str) -> None:
        """The worker holding `rid` aborted it (blocks freed)."""
        with self._cond:
            self._aborts.discard(rid)
            self._cond.notify_all()

    def publish(self, requests: Iterable[Request], make_output: Callable[[Request], TokenDelta]) -> list[Request]:
        """Publish ``make_output(request)`` for each live request in `requests`; finished ones
        leave the live set. Returns the requests published (aborted ones are skipped)."""
        published = []
        with self._cond:
            live = self._live
            for req in requests:
                if req.rid not in live:
                    if req.is_finished:  # aborted by the caller, but it finished first: nothing to free
                        self._aborts.discard(req.rid)
                    continue
                self._outbox.append(make_output(req))
                if req.is_finished:
                    del live[req.rid]
                published.append(req)
            if published:
                self._cond.notify_all()
        return published

    def fail(self, rids: list[str], error: StepError) -> list[str]:
        """The batch holding `rids` failed (its requests already aborted by the worker): they
        leave the book, and `error` will be raised by `take`. Returns the ids that were live."""
        with self._cond:
            was_live = [rid for rid in rids if self._live.pop(rid, None) is not None]
            for rid in rids:
                self._aborts.discard(rid)
            error.rids = was_live
            if was_live:
                self._failures.append(error)
            self._cond.notify_all()
            return was_live

    # -- queries --------------------------------------------------------------------------
    @property
    def num_live(self) -> int:
        return len(self._live)

    def has_unfinished(self) -> bool:
        """Live requests, or aborted ones whose blocks a worker has not freed yet."""
        return bool(self._live or self._aborts)
