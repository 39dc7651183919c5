"""`Sequence`: the engine's state of one request (the scheduler `Request`'s payload).

It holds what sampling needs (`params`, `seed`), decides token stops (EOS, stop token ids;
stop strings are matched where text is made, by `OutputProcessor`) and turns what a step
produced into a `TokenDelta`.
"""

from __future__ import annotations

from dataclasses import dataclass

from semipd.engine.core.messages import TokenDelta
from semipd.engine.sampling_params import SamplingParams
from semipd.sched.request import Request


@dataclass(eq=False)
class Sequence:
    params: SamplingParams
    seed: int
    """Sampling seed: the request's own, or one the engine drew for it."""
    stop_ids: frozenset[int]
    """EOS ids (unless ignore_eos) and the request's stop_token_ids."""
    num_sent_tokens: int = 0

    def check_stop(self, token: int) -> str | None:
        """The scheduler's stop hook, called once per generated token: "stop" for a stop token."""
        return "stop" if token in self.stop_ids else None

    def take_delta(self, req: Request) -> TokenDelta:
        """The tokens produced since the last call, and the finish reason once finished."""
        tokens = req.output_token_ids
        delta = TokenDelta(req.rid, tokens[self.num_sent_tokens:], req.finish_reason if req.is_finished else None,
                           req.num_prompt_tokens, req.num_output_tokens)
        self.num_sent_tokens = len(tokens)
        return delta
