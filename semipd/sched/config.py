"""Configuration of the schedulers (frozen, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass


def _check_positive(obj: object, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True)
class PrefillSchedulerConfig:
    """Semi-PD prefill worker's scheduler."""

    max_prefill_tokens: int = 8192
    """Token budget of one prefill iteration; longer prompts are chunked across iterations."""
    max_prefill_seqs: int = 256
    """Most sequences (chunks) in one prefill iteration."""

    def __post_init__(self) -> None:
        _check_positive(self, "max_prefill_tokens", "max_prefill_seqs")


@dataclass(frozen=True)
class DecodeSchedulerConfig:
    """Semi-PD decode worker's scheduler."""

    max_decode_batch: int = 256
    """Most requests decoded in one step (continuous batching); hand-offs beyond it wait."""

    def __post_init__(self) -> None:
        _check_positive(self, "max_decode_batch")


@dataclass(frozen=True)
class UnifiedSchedulerConfig:
    """The baseline's single scheduler (vLLM v1 with chunked prefill)."""

    max_num_batched_tokens: int = 8192
    """Token budget of one mixed iteration: one per running decode, the rest for prefill chunks."""
    max_num_seqs: int = 256
    """Most requests running (decoding or partially prefilled) at once."""

    def __post_init__(self) -> None:
        _check_positive(self, "max_num_batched_tokens", "max_num_seqs")
