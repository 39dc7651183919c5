"""Request operations shared by the schedulers: admission check, chunk allocation,
token appends, finishing, preemption and abort. Each keeps the request's state machine
and the allocator's ownership in step."""

from __future__ import annotations

from collections.abc import Sequence

from semipd.sched.base import StopChecker
from semipd.sched.batch import PrefillChunk
from semipd.sched.block_allocator import BlockAllocator
from semipd.sched.request import PENDING_TOKEN, Request, RequestState


def check_fits(allocator: BlockAllocator, request: Request) -> None:
    """Raise ValueError if `request` could not finish even alone in the pool.

    At worst (preempted just before its last token) prefill must recompute
    ``prompt + max_tokens - 1`` tokens, leaving the watermark free."""
    need = request.num_prompt_tokens + request.max_tokens - 1
    if not allocator.fits_alone(need):
        raise ValueError(
            f"request {request.rid}: {request.num_prompt_tokens} prompt + {request.max_tokens} output tokens "
            f"cannot fit in the KV pool ({allocator.num_blocks} blocks of {allocator.block_size}, "
            f"watermark {allocator.watermark})")


def allocate_chunk(allocator: BlockAllocator, request: Request, num_tokens: int) -> int:
    """Allocate slots for the next prefill chunk of `request`, up to `num_tokens` tokens,
    leaving the watermark free. Shrinks the chunk to what fits; returns its length (0: none)."""
    start = request.num_computed_tokens
    if allocator.allocate(request, start + num_tokens):
        return num_tokens
    room = (len(request.block_ids) + allocator.num_free - allocator.watermark) * allocator.block_size - start
    n = min(num_tokens, room)
    if n > 0 and allocator.allocate(request, start + n):
        return n
    return 0


def append_and_check(request: Request, token: int | None, stop_checker: StopChecker | None) -> str | None:
    """Count a sampled token; return the finish reason (stop checker first, then "length")."""
    request.append_token(token)
    if stop_checker is not None:
        reason = stop_checker(request, token)
        if reason is not None:
            return reason
    return "length" if request.num_output_tokens >= request.max_tokens else None


def decode_step_and_check(request: Request, token: int | None, stop_checker: StopChecker | None) -> str | None:
    """`Request.complete_decode_step`, then the finish reason as in `append_and_check`."""
    at_max = request.complete_decode_step(token)
    if stop_checker is not None:
        reason = stop_checker(request, token)
        if reason is not None:
            return reason
    return "length" if at_max else None


def finish(request: Request, reason: str, allocator: BlockAllocator, fence: int | None = None) -> None:
    """State FINISHED with `reason`; blocks freed (behind `fence`: `BlockAllocator.free`)."""
    request.finish_reason = reason
    request.transition(RequestState.FINISHED)
    allocator.free(request, fence)


def preempt(request: Request, allocator: BlockAllocator, fence: int | None = None) -> None:
    """Recompute preemption: free the KV, forget what was computed and any pending token, state PREEMPTED."""
    allocator.free(request, fence)
    request.drop_pending_tokens()
    request.num_computed_tokens = 0
    request.num_preemptions += 1
    request.transition(RequestState.PREEMPTED)


def abort(request: Request, allocator: BlockAllocator, fence: int | None = None) -> None:
    allocator.free(request, fence)
    request.finish_reason = "abort"
    request.transition(RequestState.ABORTED)


def resolve_pending(slots: Sequence[tuple[Request, int]], tokens: Sequence[int],
                    stop_checker: StopChecker | None) -> tuple[list[Request], list[tuple[Request, str]]]:
    """Put each token where its request holds a pending token (`Request.drop_pending_tokens`; slot
    index -1: it got none) and run the stop checker. Returns the requests that got their token, and
    those still running that stopped on it, with the reason, for the scheduler to finish. Requests
    aborted or preempted since (their pending token is gone) are skipped; one already finished by
    length takes the stop reason instead (as `append_and_check` would have given it)."""
    got: list[Request] = []
    stopped: list[tuple[Request, str]] = []
    for (r, index), token in zip(slots, tokens, strict=True):
        ids = r.output_token_ids
        if index < 0 or r.state is RequestState.ABORTED or index >= len(ids) or ids[index] != PENDING_TOKEN:
            continue
        ids[index] = token
        got.append(r)
        reason = stop_checker(r, token) if stop_checker is not None else None
        if reason is None:
            continue
        if r.is_finished:
            r.finish_reason = reason
        else:
            stopped.append((r, reason))
    return got, stopped


def apply_prefill_chunks(chunks: Sequence[PrefillChunk], tokens: Sequence[int] | None,
                         stop_checker: StopChecker | None,
                         allocator: BlockAllocator) -> tuple[list[Request], list[Request], int]:
    """Record prefill chunks as computed; a last chunk's request gets its sampled token (one per
    last chunk, in order, from `tokens`) and either finishes (blocks freed) or moves to
    WAITING_DECODE. Requests aborted while the batch ran are skipped. Returns (moved to
    WAITING_DECODE, finished, number of tokens consumed)."""
    ready: list[Request] = []
    finished: list[Request] = []
    ti = 0
    for c in chunks:
        r = c.request
        token = None
        if c.is_last:
            token = tokens[ti] if tokens is not None else None
            ti += 1
        if r.state is not RequestState.PREFILLING:
            continue  # aborted while the batch ran
        r.num_computed_tokens = c.end
        if not c.is_last:
            continue
        reason = append_and_check(r, token, stop_checker)
        if reason is not None:
            finish(r, reason, allocator)
            finished.append(r)
        else:
            r.transition(RequestState.WAITING_DECODE)
            ready.append(r)
    return ready, finished, ti
