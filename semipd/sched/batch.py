"""Plain batch objects returned by the schedulers; executors build tensors from them."""

from __future__ import annotations

from dataclasses import dataclass, field

from semipd.sched.request import Request


@dataclass
class PrefillChunk:
    """`num_tokens` tokens of `request` starting at position `start` go through prefill.
    When `is_last` the chunk completes the request's prefill and a token is sampled."""

    request: Request
    start: int
    num_tokens: int
    is_last: bool

    @property
    def end(self) -> int:
        return self.start + self.num_tokens


@dataclass
class Batch:
    """One iteration's work. The prefill scheduler fills `prefills`, the decode scheduler
    `decodes` (one new token each), the unified scheduler both."""

    prefills: list[PrefillChunk] = field(default_factory=list)
    decodes: list[Request] = field(default_factory=list)

    @property
    def num_prefill_tokens(self) -> int:
        return sum(c.num_tokens for c in self.prefills)

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + len(self.decodes)

    @property
    def is_empty(self) -> bool:
        return not self.prefills and not self.decodes

    def sampled_requests(self) -> list[Request]:
        """Requests that get a token this iteration, in the order tokens are returned:
        finishing prefill chunks first, then decodes."""
        return [c.request for c in self.prefills if c.is_last] + list(self.decodes)


@dataclass
class AdvancedBatch:
    """A launched batch whose tokens are pending: each sampled request (in `Batch.sampled_requests`
    order) with the index of its pending token in ``output_token_ids`` (-1: it got none)."""

    batch: Batch
    slots: list[tuple[Request, int]]
