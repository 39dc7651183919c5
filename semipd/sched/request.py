"""A request's scheduling state, shared by the simulator and the real engine.

State machine (preemption sends a decoding request back to prefill, which recomputes
its KV from prompt + generated tokens and samples the next token)::

    WAITING_PREFILL -> PREFILLING -> WAITING_DECODE -> DECODING -> FINISHED
          ^               |                                |
          +---------- PREEMPTED <--------------------------+
    any unfinished state -> ABORTED
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

PENDING_TOKEN = -1
"""Stands in ``output_token_ids`` for a token whose step is launched but not read back yet
(overlapped scheduling: `UnifiedScheduler.advance`); `UnifiedScheduler.resolve` fills it in."""


class RequestState(Enum):
    WAITING_PREFILL = "waiting_prefill"
    PREFILLING = "prefilling"
    WAITING_DECODE = "waiting_decode"
    DECODING = "decoding"
    PREEMPTED = "preempted"
    FINISHED = "finished"
    ABORTED = "aborted"


_ALLOWED: dict[RequestState, frozenset[RequestState]] = {
    RequestState.WAITING_PREFILL: frozenset({RequestState.PREFILLING, RequestState.ABORTED}),
    RequestState.PREFILLING: frozenset(
        {RequestState.PREFILLING, RequestState.WAITING_DECODE, RequestState.PREEMPTED,
         RequestState.FINISHED, RequestState.ABORTED}
    ),
    RequestState.WAITING_DECODE: frozenset({RequestState.DECODING, RequestState.PREEMPTED,
                                            RequestState.ABORTED, RequestState.FINISHED}),
    RequestState.DECODING: frozenset({RequestState.DECODING, RequestState.PREEMPTED,
                                      RequestState.FINISHED, RequestState.ABORTED}),
    RequestState.PREEMPTED: frozenset({RequestState.PREFILLING, RequestState.ABORTED}),
    RequestState.FINISHED: frozenset(),
    RequestState.ABORTED: frozenset(),
}


@dataclass(eq=False, slots=True)
class Request:
    """One generation request.

    ``prompt_token_ids`` may be None in the simulator, where only lengths matter; then
    ``num_prompt_tokens`` must be given. ``payload`` carries executor data the scheduler
    never looks at (the engine's sampling parameters, say).

    Generated tokens are counted in ``num_output_tokens``; their ids are kept in
    ``output_token_ids`` only when the executor samples real ones (the simulator passes
    none, so a simulated hour builds no per-token lists). Add tokens with `append_token`.
    """

    rid: str
    num_prompt_tokens: int
    max_tokens: int
    arrival_time: float
    prompt_token_ids: Sequence[int] | None = None
    payload: Any = None
    state: RequestState = RequestState.WAITING_PREFILL
    output_token_ids: list[int] = field(default_factory=list)
    num_output_tokens: int = 0
    """Tokens generated so far (ids in ``output_token_ids`` when the executor has them)."""
    num_computed_tokens: int = 0
    """Tokens whose K/V are in the cache."""
    block_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    num_preemptions: int = 0

    def __post_init__(self) -> None:
        if self.prompt_token_ids is not None and self.num_prompt_tokens != len(self.prompt_token_ids):
            raise ValueError("num_prompt_tokens must equal len(prompt_token_ids)")
        if self.num_prompt_tokens < 1:
            raise ValueError(f"num_prompt_tokens must be >= 1, got {self.num_prompt_tokens}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.output_token_ids and self.num_output_tokens != len(self.output_token_ids):
            raise ValueError("num_output_tokens must equal len(output_token_ids) when ids are given")

    # -- derived properties -------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_prefill_tokens(self) -> int:
        """Tokens prefill must put in the cache before it samples the next token: the
        prompt, or after a preemption the prompt plus every generated token (recompute)."""
        return self.num_tokens

    @property
    def remaining_prefill_tokens(self) -> int:
        return max(0, self.num_prefill_tokens - self.num_computed_tokens)

    @property
    def is_finished(self) -> bool:
        return self.state in (RequestState.FINISHED, RequestState.ABORTED)

    @property
    def remaining_tokens(self) -> int:
        """Tokens still to generate before `max_tokens`."""
        return self.max_tokens - self.num_output_tokens

    def append_token(self, token_id: int | None) -> None:
        """Count one generated token; keep its id unless it is None (simulator)."""
        self.num_output_tokens += 1
        if token_id is not None:
            self.output_token_ids.append(token_id)

    def complete_decode_step(self, token_id: int | None) -> bool:
        """A decode step ran: the K/V of every token so far is cached and `token_id` (None in
        the simulator) was sampled. Returns True when ``max_tokens`` is reached."""
        n = self.num_output_tokens
        self.num_computed_tokens = self.num_prompt_tokens + n
        self.num_output_tokens = n + 1
        if token_id is not None:
            self.output_token_ids.append(token_id)
        return n + 1 >= self.max_tokens

    def drop_pending_tokens(self) -> None:
        """Forget tokens still pending at the end of the output (a preemption recomputes them)."""
        ids = self.output_token_ids
        while ids and ids[-1] == PENDING_TOKEN:
            ids.pop()
            self.num_output_tokens -= 1

    @property
    def last_token_id(self) -> int:
        if self.output_token_ids:
            return self.output_token_ids[-1]
        assert self.prompt_token_ids is not None
        return self.prompt_token_ids[-1]

    def token_ids(self, start: int, end: int) -> list[int]:
        """Token ids at positions [start, end) of prompt + output."""
        assert self.prompt_token_ids is not None
        p = self.num_prompt_tokens
        out: list[int] = list(self.prompt_token_ids[start:min(end, p)])
        if end > p:
            out.extend(self.output_token_ids[max(0, start - p):end - p])
        return out

    def transition(self, new: RequestState) -> None:
        """Move to `new`; raises RuntimeError on a transition the diagram forbids."""
        if new not in _ALLOWED[self.state]:
            raise RuntimeError(f"request {self.rid}: illegal transition {self.state.name} -> {new.name}")
        self.state = new
