"""`LifecycleRecorder`: the one place where a request's lifecycle times are recorded.

Executors (the real engine, its Semi-PD workers, the simulator) call it at the points of a
request's life they see; it turns them into `SemiPDMetricsCollector` events exactly once each
(a preempted request's second prefill does not start it again).

Where the latencies are measured (``delivery``):

- ``delivery=True``: the executor is what clients see (the simulator, `LLM`, the in-process
  server): first token, later tokens and the end are recorded when the executor produces them.
- ``delivery=False``: the engine runs in its own process behind an API process. The engine
  records arrival (with the API's arrival time), prefill start/end and decode start; the API
  records first token, tokens and the end when it hands them to clients and forwards those
  times (``ClientEvents``), which the engine core applies with `client_*`. So the SLO
  controller acts on TTFT and TPOT as clients see them, queueing and transport included.
"""

from __future__ import annotations

from collections.abc import Iterable

from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.sched.request import Request


class LifecycleRecorder:
    """Records lifecycle events of requests into `collector` (see the module docstring)."""

    def __init__(self, collector: SemiPDMetricsCollector, delivery: bool = True) -> None:
        self.collector = collector
        self.delivery = delivery
        self._prefill_started: set[str] = set()
        self._decode_started: set[str] = set()
        self._first_token_done: set[str] = set()

    # -- executor side ------------------------------------------------------------------------
    def arrival(self, request: Request) -> None:
        self.collector.record_request_arrival(request.rid, request.num_prompt_tokens, timestamp=request.arrival_time)

    def prefill_started(self, requests: Iterable[Request], t: float) -> None:
        """These requests had a prefill chunk scheduled at `t` (only a first one counts)."""
        started = self._prefill_started
        for req in requests:
            if req.rid not in started:
                started.add(req.rid)
                self.collector.record_prefill_start(req.rid, timestamp=t)

    def decode_started(self, requests: Iterable[Request], t: float) -> None:
        started = self._decode_started
        for req in requests:
            if req.rid not in started:
                started.add(req.rid)
                self.collector.record_decode_start(req.rid, timestamp=t)

    def sampled(self, requests: Iterable[Request], t: float) -> None:
        """Each request got one token at `t` (its first ends its prefill); finished ones end."""
        for req in requests:
            if not self.first_token(req, t) and self.delivery:
                self.collector.record_token(req.rid, timestamp=t)
            if req.is_finished:
                self.completed(req, t)

    def first_token(self, request: Request, t: float) -> bool:
        """The request's first token at `t` ends its prefill; False (nothing recorded) if it had one
        already (a recompute after preemption samples its next token again, not a first one)."""
        done = self._first_token_done
        if request.rid in done:
            return False
        done.add(request.rid)
        self.collector.record_prefill_end(request.rid, timestamp=t)
        if self.delivery:
            self.collector.record_first_token(request.rid, timestamp=t)
        return True

    def decode_step(self, requests: Iterable[Request], t: float) -> None:
        """One decode step gave each request one token at `t`, recorded in bulk
        (`SemiPDMetricsCollector.record_decode_step`: no per-token times kept; the simulator's form)."""
        if self.delivery:
            self.collector.record_decode_step([r.rid for r in requests], timestamp=t)

    def completed(self, request: Request, t: float) -> None:
        if self.delivery:
            self.collector.record_request_completion(request.rid, request.num_output_tokens, success=True,
                                                     timestamp=t)
        self.forget(request.rid)

    def aborted(self, rid: str, t: float | None = None) -> None:
        if self.delivery:
            self.collector.record_request_abort(rid, timestamp=t)
        self.forget(rid)

    def failed(self, rid: str, t: float) -> None:
        if self.delivery:
            self.collector.record_request_completion(rid, 0, success=False, timestamp=t)
        self.forget(rid)

    def forget(self, rid: str) -> None:
        self._prefill_started.discard(rid)
        self._decode_started.discard(rid)
        self._first_token_done.discard(rid)

    # -- client side (delivery=False: times the API process forwarded) ---------------------------
    def client_first_tokens(self, events: Iterable[tuple[str, float]]) -> None:
        for rid, t in events:
            self.collector.record_first_token(rid, timestamp=t)

    def client_tokens(self, events: Iterable[tuple[str, float]]) -> None:
        for rid, t in events:
            self.collector.record_token(rid, timestamp=t)

    def client_completions(self, events: Iterable[tuple[str, int, bool, float]]) -> None:
        for rid, num_tokens, success, t in events:
            self.collector.record_request_completion(rid, num_tokens, success=success, timestamp=t)

    def client_aborts(self, events: Iterable[tuple[str, float]]) -> None:
        for rid, t in events:
            self.collector.record_request_abort(rid, timestamp=t)
