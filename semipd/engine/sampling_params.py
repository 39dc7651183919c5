"""Per-request generation settings and the outputs the engine streams back. No torch here:
the server imports these without loading the engine."""

from __future__ import annotations

from dataclasses import dataclass, field

GREEDY_TEMPERATURE = 1e-5
"""Temperatures below this sample greedily (argmax), as in vLLM. Dividing logits by a smaller
temperature can overflow float32 to +inf, and ties among infinities would pick the wrong token."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples and when it stops. Invalid values raise ValueError naming the field."""

    max_tokens: int = 16
    """Most tokens to generate (>= 1)."""
    temperature: float = 1.0
    """0 (or anything below `GREEDY_TEMPERATURE`) is greedy (argmax); otherwise logits are divided by it."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p, in (0, 1]. The most
    likely token always stays, however small top_p is."""
    top_k: int = -1
    """Keep the k most likely tokens; -1 (or 0) keeps all."""
    seed: int | None = None
    """Seed for this request's sampling noise: same seed and prompt give the same tokens."""
    stop: list[str] = field(default_factory=list)
    """Stop strings: generation ends when the text contains one; the text returned stops before it."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end generation (kept in the output ids, like EOS)."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks force output lengths this way)."""

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", [self.stop])
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < float("inf"):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise ValueError(f"top_k must be -1, 0 (all tokens) or a positive int, got {self.top_k!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if not isinstance(self.stop_token_ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids must be a list of ints >= 0, got {self.stop_token_ids!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be a bool, got {self.ignore_eos!r}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE


@dataclass
class RequestOutput:
    """What one engine step produced for one request (streaming delta plus totals so far)."""

    rid: str
    new_token_ids: list[int]
    new_text: str
    token_ids: list[int]
    text: str
    finished: bool
    finish_reason: str | None
    """"stop" (EOS, a stop token or a stop string), "length" (max_tokens or the context), "abort"."""
    num_prompt_tokens: int
    num_output_tokens: int


@dataclass
class CompletionOutput:
    """One finished generation, as `LLM.generate` returns it."""

    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str | None

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids)
