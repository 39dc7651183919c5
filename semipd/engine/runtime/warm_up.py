"""Warm-up before serving: batches of the shapes serving produces, run once so that Triton compiles
the kernel variants they need (and cuBLAS meets their shapes) before the first request waits on it.
On a cold start that was a TTFT p90 of ~0.9 s at the first load after start on an H200.

Requests here are synthetic (`synthetic_request`): fixed prompt tokens, KV blocks taken from the
allocator and given back by the caller; a decode row of such a request re-decodes its last
prompt position, which writes only into its own blocks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.sampling_params import SamplingParams
from semipd.sched import Batch, BlockAllocator, PrefillChunk, Request

_GREEDY_ONE = SamplingParams(temperature=0.0, max_tokens=1)


def synthetic_request(allocator: BlockAllocator, rid: str, num_tokens: int, vocab_size: int) -> Request:
    """A greedy request of `num_tokens` fixed prompt tokens with KV blocks for all of them (plus
    one), taken from `allocator` (free them with ``allocator.free``). For warm-up and probes."""
    prompt = [(7 * i + 11) % vocab_size for i in range(num_tokens)]
    req = Request(rid, num_tokens, 1, 0.0, prompt_token_ids=prompt,
                  payload=SimpleNamespace(params=_GREEDY_ONE, seed=0))
    if not allocator.allocate(req, num_tokens + 1, use_watermark=False):
        raise RuntimeError(f"no KV room for a synthetic request of {num_tokens} tokens")
    return req


def prefill_warm_up_batches(allocator: BlockAllocator, vocab_size: int, num_tokens: int,
                     made: list[Request]) -> list[Batch]:
    """Prefill batches of the shapes serving produces: several sequences of odd lengths, and a
    prompt in two chunks (the second attends to cached context). Requests go into `made`."""
    lengths = [n for n in (37, 301, 999) if n < num_tokens] or [num_tokens]
    multi = [synthetic_request(allocator, f"warm-up-{i}", n, vocab_size) for i, n in enumerate(lengths)]
    made.extend(multi)
    batches = [Batch(prefills=[PrefillChunk(r, 0, r.num_prompt_tokens, True) for r in multi])]
    if num_tokens >= 2:
        two = synthetic_request(allocator, "warm-up-chunked", num_tokens, vocab_size)
        made.append(two)
        half = num_tokens // 2
        batches += [Batch(prefills=[PrefillChunk(two, 0, half, False)]),
                    Batch(prefills=[PrefillChunk(two, half, num_tokens - half, True)])]
    return batches


def mixed_warm_up_batches(allocator: BlockAllocator, vocab_size: int, num_tokens: int, max_seqs: int,
                          max_context: int) -> Iterator[tuple[Batch, list[Request]]]:
    """Mixed batches of the unified engine: decode batches of a few sizes at short and long contexts
    (the decode kernel's split count depends on both) beside a prefill chunk. Yields each batch with
    the synthetic requests it holds; the caller frees them once the batch ran. Shapes that do not
    fit in the free KV blocks are skipped."""
    chunk = min(num_tokens // 2, 512)
    contexts = sorted({c for c in (64, 1024, max_context - 2) if 2 <= c < max_context - 1})
    sizes = sorted({b for b in (1, 8, 64, max_seqs - 1) if 1 <= b < max_seqs})
    for context in contexts:
        for size in sizes:
            need = allocator.blocks_needed(context + 1) * size + allocator.blocks_needed(chunk + 1)
            if chunk < 1 or need > allocator.num_free:
                continue
            decodes = [synthetic_request(allocator, f"warm-up-d{context}-{size}-{i}", context, vocab_size)
                       for i in range(size)]
            new = synthetic_request(allocator, f"warm-up-p{context}-{size}", chunk, vocab_size)
            yield Batch(prefills=[PrefillChunk(new, 0, chunk, True)], decodes=decodes), [*decodes, new]


def warm_up_unified(runner: ModelRunner, allocator: BlockAllocator, vocab_size: int, num_tokens: int,
                    max_seqs: int, max_context: int) -> tuple[float, int]:
    """Run the unified engine's warm-up batches (prefill shapes, then mixed ones) once on the current
    stream, waiting for each; every block taken comes back. Returns (seconds, batches run)."""
    start = time.perf_counter()
    made: list[Request] = []
    count = 0
    try:
        for batch in prefill_warm_up_batches(allocator, vocab_size, num_tokens, made):
            runner.run(batch)
            count += 1
    finally:
        for req in made:
            allocator.free(req)
    for batch, reqs in mixed_warm_up_batches(allocator, vocab_size, num_tokens, max_seqs, max_context):
        try:
            runner.run(batch)
            count += 1
        finally:
            for req in reqs:
                allocator.free(req)
    return time.perf_counter() - start, count
