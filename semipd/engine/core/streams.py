"""`RequestStreams`: the API process's open requests on an engine core, one asyncio queue each.

It turns the core's `StepOutputs` into streamed `RequestOutput`s (through `OutputProcessor`:
text, stop strings) and records each request's lifecycle as clients see it, at the moment
an output is handed to the request's queue: into this process's collector (what /metrics
exports) and into a `ClientEvents` message for the core's SLO controller. Single-threaded: the
event loop owns it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from semipd.engine.core import messages as m
from semipd.engine.core.interface import RequestFailedError
from semipd.engine.output_processor import OutputProcessor
from semipd.engine.sampling_params import SamplingParams
from semipd.metrics import SemiPDMetricsCollector


@dataclass(eq=False)
class _Stream:
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    waiting: bool = True
    """No token yet (counts towards the waiting queue's limit)."""


@dataclass
class _Events:
    """Client-side lifecycle times not yet sent to the core."""

    first_tokens: list[tuple[str, float]] = field(default_factory=list)
    tokens: list[tuple[str, float]] = field(default_factory=list)
    completions: list[tuple[str, int, bool, float]] = field(default_factory=list)
    aborts: list[tuple[str, float]] = field(default_factory=list)

    def message(self) -> m.ClientEvents | None:
        if not (self.first_tokens or self.tokens or self.completions or self.aborts):
            return None
        return m.ClientEvents(self.first_tokens, self.tokens, self.completions, self.aborts)


@dataclass
class Applied:
    """What applying one `StepOutputs` asks of the caller: requests to abort in the core (a stop string
    ended them here) and the lifecycle events to forward."""

    engine_aborts: list[str]
    events: m.ClientEvents | None


class RequestStreams:
    """Open requests, their output processing and their client-side lifecycle (module docstring)."""

    def __init__(self, processor: OutputProcessor, collector: SemiPDMetricsCollector) -> None:
        self._processor = processor
        self._collector = collector
        self._streams: dict[str, _Stream] = {}
        self.num_waiting = 0
        """Open requests without a token yet."""

    def __contains__(self, rid: str) -> bool:
        return rid in self._streams

    def __len__(self) -> int:
        return len(self._streams)

    def open(self, rid: str, prompt_token_ids: Sequence[int], params: SamplingParams,
             arrival_time: float) -> asyncio.Queue:
        """Track a request sent to the core; its outputs (or an exception) arrive on the queue."""
        if rid in self._streams:
            raise ValueError(f"request id {rid!r} is already running")
        self._processor.add(rid, prompt_token_ids, params)
        stream = self._streams[rid] = _Stream()
        self.num_waiting += 1
        self._collector.record_request_arrival(rid, len(prompt_token_ids), timestamp=arrival_time)
        return stream.queue

    def close(self, rid: str, now: float) -> m.ClientEvents | None:
        """The client left: forget `rid` (recorded as aborted); the events to forward, None if unknown."""
        if self._pop(rid) is None:
            return None
        self._collector.record_request_abort(rid, timestamp=now)
        return m.ClientEvents([], [], [], [(rid, now)])

    def apply(self, msg: m.StepOutputs, now: float) -> Applied:
        """Hand one step's outputs to their streams; refused and failed requests get their error."""
        processor, collector = self._processor, self._collector
        events = _Events()
        engine_aborts: list[str] = []
        for delta in msg.deltas:
            stream = self._streams.get(delta.rid)
            if stream is None:
                continue
            processed = processor.process(delta)
            if processed is None:
                continue
            out = processed.output
            if processed.abort_in_engine:
                engine_aborts.append(delta.rid)
            if stream.waiting:
                stream.waiting = False
                self.num_waiting -= 1
                events.first_tokens.append((delta.rid, now))
                collector.record_first_token(delta.rid, timestamp=now)
            elif out.new_token_ids:
                events.tokens.append((delta.rid, now))
                collector.record_token(delta.rid, timestamp=now)
            if out.finished:
                del self._streams[delta.rid]
                events.completions.append((delta.rid, out.num_output_tokens, True, now))
                collector.record_request_completion(delta.rid, out.num_output_tokens, success=True, timestamp=now)
            stream.queue.put_nowait(out)
        for rid, reason in msg.rejected:
            self._end(rid, ValueError(reason), events, now, failed=False)
        for rid, reason in msg.failed:
            self._end(rid, RequestFailedError(reason), events, now, failed=True)
        return Applied(engine_aborts, events.message())

    def fail_all(self, reason: str, now: float) -> None:
        """End every open request with `RequestFailedError` (the core is gone)."""
        events = _Events()
        for rid in list(self._streams):
            self._end(rid, RequestFailedError(reason), events, now, failed=True)

    def _end(self, rid: str, error: BaseException, events: _Events, now: float, failed: bool) -> None:
        stream = self._pop(rid)
        if stream is None:
            return
        if failed:
            events.completions.append((rid, 0, False, now))
            self._collector.record_request_completion(rid, 0, success=False, timestamp=now)
        else:  # refused before it ran
            self._collector.record_request_abort(rid, timestamp=now)
        stream.queue.put_nowait(error)

    def _pop(self, rid: str) -> _Stream | None:
        stream = self._streams.pop(rid, None)
        if stream is None:
            return None
        if stream.waiting:
            self.num_waiting -= 1
        self._processor.drop(rid)
        return stream
