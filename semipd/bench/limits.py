"""Keep requests within what the server can take: its vocabulary and its context length.

A benchmark whose every request the server refuses measures nothing. When the server says how
large its vocabulary and context are (`semipd.bench.server_info`), random token ids are kept
inside the vocabulary, a trace's prompts are shortened to fit the context with their outputs,
and random lengths that cannot fit are refused before anything is sent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from semipd.bench.datasets import DEFAULT_TOKEN_RANGE, BenchRequest


def token_range_for(requested: tuple[int, int] | None, vocab_size: int | None) -> tuple[tuple[int, int], str]:
    """The token-id range [low, high) to draw prompts from, and a note when it differs from the one
    asked for ('' otherwise). `requested` None means the default range, which shrinks to the
    vocabulary (down to 0:vocab_size when the vocabulary ends below its low end); an explicit range
    is cut at the vocabulary's end, and refused (ValueError) when nothing of it is left."""
    low, high = requested if requested is not None else DEFAULT_TOKEN_RANGE
    if not 0 <= low < high:
        raise ValueError(f"--random-token-range {low}:{high} is empty")
    if vocab_size is None or high <= vocab_size:
        return (low, high), ""
    if low < vocab_size:
        return (low, vocab_size), f"token ids {low}:{high} cut to {low}:{vocab_size}: the server's vocabulary " \
                                  f"has {vocab_size} tokens"
    if requested is None:
        return (0, vocab_size), f"token ids 0:{vocab_size} (the default {low}:{high} lies outside the server's " \
                                f"{vocab_size}-token vocabulary)"
    raise ValueError(f"--random-token-range {low}:{high} lies outside the server's vocabulary ({vocab_size} tokens); "
                     f"use ids below {vocab_size}, e.g. --random-token-range 0:{vocab_size}")


def check_random_lengths(input_len: int, output_len: int, range_ratio: float, max_model_len: int | None) -> None:
    """Refuse random lengths whose longest prompt plus output exceeds the server's context (ValueError)."""
    if max_model_len is None:
        return
    longest_in = max(1, int(input_len * (1 + range_ratio)))
    longest_out = max(1, int(output_len * (1 + range_ratio)))
    if longest_in + longest_out > max_model_len:
        raise ValueError(f"prompts of up to {longest_in} tokens plus outputs of up to {longest_out} exceed the "
                         f"server's max_model_len of {max_model_len} tokens; lower --random-input-len, "
                         "--random-output-len or --random-range-ratio")


def fit_to_context(requests: Sequence[BenchRequest], max_model_len: int | None) -> tuple[list[BenchRequest], int]:
    """`requests` with prompts (token ids, or words for text prompts) shortened so that prompt plus
    output fits `max_model_len` (outputs too, down to max_model_len - 1, when they alone do not),
    and how many were changed."""
    if max_model_len is None:
        return list(requests), 0
    if max_model_len < 2:
        raise ValueError(f"the server's max_model_len of {max_model_len} leaves no room for a prompt and an output")
    out, changed = [], 0
    for r in requests:
        if r.input_len + r.output_len <= max_model_len:
            out.append(r)
            continue
        output_len = min(r.output_len, max_model_len - 1)
        input_len = min(r.input_len, max_model_len - output_len)
        if isinstance(r.prompt, str):
            prompt: str | tuple[int, ...] = " ".join(r.prompt.split()[:input_len])
        else:
            prompt = r.prompt[:input_len]
        out.append(replace(r, prompt=prompt, input_len=input_len, output_len=output_len))
        changed += 1
    return out, changed
