"""`OutputProcessor`: token-id deltas from the engine -> `RequestOutput`s with text, for the API.

The engine produces token ids only; the side that talks to clients (the API process, or
`LLM` and `AsyncEngine` in-process) detokenizes them incrementally and matches stop strings
here. A stop string ends the request on this side at once: the text stops before it, later
tokens are dropped, and the caller aborts the request in the engine (`StopResult.abort`),
which may have run a step or two further by then. Streamed text holds back the last
``len(longest stop string) - 1`` characters while the request runs, so a stop string is
never half-sent before it is cut off.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from semipd.engine.core.messages import TokenDelta
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.engine.tokenizer import IncrementalDetokenizer, Tokenizer


@dataclass(eq=False)
class RequestState:
    """One request's output side: its tokens and text so far, what was sent, its stop strings."""

    rid: str
    num_prompt_tokens: int
    stop: tuple[str, ...]
    detokenizer: IncrementalDetokenizer | None
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    num_sent_tokens: int = 0
    num_sent_chars: int = 0
    finish_reason: str | None = None
    _holdback: int = 0

    def __post_init__(self) -> None:
        self._holdback = max((len(s) for s in self.stop), default=1) - 1

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def add_tokens(self, new_token_ids: Sequence[int]) -> bool:
        """Append tokens (detokenizing each); True when a stop string ended the request (later
        tokens of `new_token_ids` are dropped)."""
        for token in new_token_ids:
            self.token_ids.append(token)
            if self.detokenizer is None:
                continue
            delta = self.detokenizer.add(token)
            if not delta:
                continue
            start = max(0, len(self.text) - self._holdback)
            self.text += delta
            for s in self.stop:
                i = self.text.find(s, start)
                if i >= 0:
                    self.text = self.text[:i]
                    self.finish_reason = "stop"
                    return True
        return False

    def take_output(self) -> RequestOutput:
        """The tokens and text produced since the last call, plus the totals."""
        finished = self.finished
        end = len(self.text) if finished else max(self.num_sent_chars, len(self.text) - self._holdback)
        out = RequestOutput(rid=self.rid, new_token_ids=self.token_ids[self.num_sent_tokens:],
                            new_text=self.text[self.num_sent_chars:end], token_ids=list(self.token_ids),
                            text=self.text[:end], finished=finished, finish_reason=self.finish_reason,
                            num_prompt_tokens=self.num_prompt_tokens, num_output_tokens=len(self.token_ids))
        self.num_sent_tokens = len(self.token_ids)
        self.num_sent_chars = end
        return out

    def abort_output(self) -> RequestOutput:
        """The final output of a request the engine aborted."""
        self.finish_reason = "abort"
        return self.take_output()


@dataclass
class ProcessedOutput:
    output: RequestOutput
    abort_in_engine: bool
    """A stop string ended the request here while the engine still runs it: abort it there."""


class OutputProcessor:
    """Detokenization and stop strings for every live request (see the module docstring).
    Not thread-safe: one thread (or one event loop) owns it."""

    def __init__(self, tokenizer: Tokenizer | None) -> None:
        self.tokenizer = tokenizer
        self._states: dict[str, RequestState] = {}

    def add(self, rid: str, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Start tracking `rid`; ValueError for a live duplicate."""
        if rid in self._states:
            raise ValueError(f"request id {rid!r} is already running")
        detok = None
        if self.tokenizer is not None:
            detok = self.tokenizer.detokenizer(prompt_token_ids)
        self._states[rid] = RequestState(rid, len(prompt_token_ids), tuple(params.stop), detok)

    def __contains__(self, rid: str) -> bool:
        return rid in self._states

    def __len__(self) -> int:
        return len(self._states)

    def process(self, delta: TokenDelta) -> ProcessedOutput | None:
        """The output for one engine delta; None for an unknown (finished, aborted) request."""
        state = self._states.get(delta.rid)
        if state is None:
            return None
        stopped = state.add_tokens(delta.new_token_ids)
        if not stopped and delta.finish_reason is not None:
            state.finish_reason = delta.finish_reason
        if state.finished:
            del self._states[delta.rid]
        return ProcessedOutput(state.take_output(), abort_in_engine=stopped and delta.finish_reason is None)

    def abort(self, rid: str) -> RequestOutput | None:
        """Stop tracking `rid`; its final output (finish_reason "abort"), or None if unknown."""
        state = self._states.pop(rid, None)
        return None if state is None else state.abort_output()

    def drop(self, rid: str) -> None:
        """Stop tracking `rid` without an output (it failed or was refused)."""
        self._states.pop(rid, None)

    def rids(self) -> list[str]:
        return list(self._states)
