"""`Sequence`: the engine's state of one request (the scheduler `Request`'s payload).

It holds what sampling needs (`params`, `seed`), decides stops (EOS, stop token ids, stop
strings on the detokenized text) and turns what a step produced into a `RequestOutput`
delta. Streamed text holds back the last ``len(longest stop string) - 1`` characters
while the request runs, so a stop string is never half-sent before it is cut off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.engine.tokenizer import IncrementalDetokenizer
from semipd.sched.request import Request


@dataclass(eq=False)
class Sequence:
    params: SamplingParams
    seed: int
    """Sampling seed: the request's own, or one the engine drew for it."""
    stop_ids: frozenset[int]
    """EOS ids (unless ignore_eos) and the request's stop_token_ids."""
    detokenizer: IncrementalDetokenizer | None
    text: str = ""
    """Output text so far (cut before a stop string once one appears)."""
    num_sent_tokens: int = 0
    num_sent_chars: int = 0
    prefill_started: bool = False
    decode_started: bool = False
    first_token_done: bool = False
    _holdback: int = field(init=False)

    def __post_init__(self) -> None:
        self._holdback = max((len(s) for s in self.params.stop), default=1) - 1

    def check_stop(self, token: int) -> str | None:
        """Called once per generated token (the scheduler's stop hook): detokenizes it and
        returns "stop" when it is a stop token or the text now contains a stop string."""
        if self.detokenizer is not None:
            delta = self.detokenizer.add(token)
            if delta:
                start = max(0, len(self.text) - self._holdback)
                self.text += delta
                for s in self.params.stop:
                    i = self.text.find(s, start)
                    if i >= 0:
                        self.text = self.text[:i]
                        return "stop"
        return "stop" if token in self.stop_ids else None

    def take_output(self, req: Request) -> RequestOutput:
        """The tokens and text produced since the last call, plus the totals."""
        finished = req.is_finished
        tokens = req.output_token_ids
        end = len(self.text) if finished else max(self.num_sent_chars, len(self.text) - self._holdback)
        out = RequestOutput(
            rid=req.rid,
            new_token_ids=tokens[self.num_sent_tokens:],
            new_text=self.text[self.num_sent_chars:end],
            token_ids=list(tokens),
            text=self.text[:end],
            finished=finished,
            finish_reason=req.finish_reason if finished else None,
            num_prompt_tokens=req.num_prompt_tokens,
            num_output_tokens=req.num_output_tokens,
        )
        self.num_sent_tokens = len(tokens)
        self.num_sent_chars = end
        return out
