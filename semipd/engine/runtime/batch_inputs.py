"""Host side of a step: a scheduler `Batch` -> numpy arrays -> device tensors in one copy.

Token layout of a batch (the flattened "varlen" layout of `semipd.engine.runtime.attention.base`)::

    [ chunk 0 tokens | chunk 1 tokens | ... | decode 0 | decode 1 | ... ]

A prefill chunk of `request` covers positions ``start .. start + num_tokens - 1`` of its
prompt + output tokens; a decode covers the one position ``num_tokens - 1`` (the last
sampled token, whose K/V is not cached yet). Rows that get a token sampled are the last
row of each finishing chunk, then every decode row: the order of `Batch.sampled_requests`.

Per-step Python work is one short loop over the batch's requests. Block tables live in a
persistent numpy table, one row per request (`RequestRows`), written only when a request's
``block_ids`` grow (or are replaced, after a preemption); slots and table slices are numpy
gathers. Each request's ``payload`` must carry ``params`` (`SamplingParams`) and ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semipd.engine.sampling_params import GREEDY_TEMPERATURE
from semipd.sched.batch import Batch
from semipd.sched.request import Request

_ROW, _BLOCKS, _WRITTEN, _TICK, _TEMP, _TOP_K, _TOP_P, _SEED = range(8)


def _int64(seed: int) -> int:
    """Any Python int into the int64 range (two's complement wrap)."""
    return (seed + (1 << 63)) % (1 << 64) - (1 << 63)


class RequestRows:
    """A host block table with one row per live request, plus each request's sampling parameters.

    A request keeps its row while it shows up in batches; rows of requests absent from the
    current call are reclaimed only when no row is free (then they are rebuilt on return).
    ``request.block_ids`` must only grow in place or be replaced by a new list (as the
    `BlockAllocator` does); either is noticed, nothing else is.
    """

    def __init__(self, vocab_size: int, rows: int = 64, width: int = 64) -> None:
        self.vocab_size = vocab_size
        self.table = np.zeros((rows, width), dtype=np.int32)
        self._entries: dict[Request, list] = {}
        self._free = list(range(rows - 1, -1, -1))
        self._tick = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _admit(self, request: Request) -> list:
        if not self._free:
            stale = [r for r, e in self._entries.items() if e[_TICK] != self._tick]
            for r in stale:
                self._free.append(self._entries.pop(r)[_ROW])
        if not self._free:
            rows = self.table.shape[0]
            self.table = np.concatenate([self.table, np.zeros_like(self.table)])
            self._free = list(range(2 * rows - 1, rows - 1, -1))
        p = request.payload.params
        k = p.top_k if 0 < p.top_k <= self.vocab_size else self.vocab_size
        entry = [self._free.pop(), None, 0, 0, float(p.temperature), k, float(p.top_p), _int64(request.payload.seed)]
        self._entries[request] = entry
        return entry

    def _write(self, entry: list, blocks: list[int]) -> None:
        n = len(blocks)
        if n > self.table.shape[1]:
            wider = np.zeros((self.table.shape[0], max(n, 2 * self.table.shape[1])), dtype=np.int32)
            wider[:, :self.table.shape[1]] = self.table
            self.table = wider
        start = entry[_WRITTEN] if entry[_BLOCKS] is blocks and entry[_WRITTEN] <= n else 0
        if n > start:
            self.table[entry[_ROW], start:n] = blocks[start:]
        entry[_BLOCKS] = blocks
        entry[_WRITTEN] = n

    def gather(self, requests: list[Request]) -> tuple[np.ndarray, np.ndarray, list[int], list[list]]:
        """Rows (int64), token counts (int64), last token ids and entries of `requests`, tables synced."""
        self._tick += 1
        tick = self._tick
        entries = self._entries
        rows, counts, last, found = [], [], [], []
        for r in requests:
            e = entries.get(r)
            if e is None:
                e = self._admit(r)
            blocks = r.block_ids
            if e[_BLOCKS] is not blocks or e[_WRITTEN] != len(blocks):
                self._write(e, blocks)
            e[_TICK] = tick
            rows.append(e[_ROW])
            counts.append(r.num_prompt_tokens + r.num_output_tokens)
            last.append(r.last_token_id)
            found.append(e)
        return np.array(rows, dtype=np.int64), np.array(counts, dtype=np.int64), last, found


@dataclass
class HostSampling:
    """Sampling parameters of the sampled rows, in `Batch.sampled_requests` order."""

    temperatures: np.ndarray
    """float32"""
    top_ks: np.ndarray
    """int64, vocab size for no limit"""
    top_ps: np.ndarray
    """float32"""
    seeds: np.ndarray
    """int64"""
    steps: np.ndarray
    """int64: output tokens so far (the index of the token being sampled)"""
    all_greedy: bool
    use_top_k_top_p: bool

    @classmethod
    def of(cls, entries: list[list], requests: list[Request], vocab_size: int) -> HostSampling:
        temps = np.array([e[_TEMP] for e in entries], dtype=np.float32)
        top_ks = np.array([e[_TOP_K] for e in entries], dtype=np.int64)
        top_ps = np.array([e[_TOP_P] for e in entries], dtype=np.float32)
        sampled = temps >= GREEDY_TEMPERATURE
        return cls(temps, top_ks, top_ps, np.array([e[_SEED] for e in entries], dtype=np.int64),
                   np.array([r.num_output_tokens for r in requests], dtype=np.int64),
                   all_greedy=not sampled.any(),
                   use_top_k_top_p=bool((sampled & ((top_ks < vocab_size) | (top_ps < 1.0))).any()))


@dataclass
class HostBatch:
    """One batch as host arrays (see the module docstring for the layout)."""

    is_decode: bool
    input_ids: np.ndarray
    """int64 [T]"""
    positions: np.ndarray
    """int64 [T]"""
    slot_mapping: np.ndarray
    """int64 [T]"""
    seq_lens: np.ndarray
    """int32 [B]"""
    cu_seqlens_q: np.ndarray
    """int32 [B + 1]"""
    block_tables: np.ndarray
    """int32 [B, max blocks of any sequence]; unused entries are stale ids, never read"""
    sample_rows: np.ndarray
    """int64 [S]"""
    sampling: HostSampling
    sampled: list[Request]
    max_seqlen_q: int
    max_seqlen_k: int


PAD_STEPS_PER_OCTAVE = 16
"""Token-count buckets of padded prefill batches: every multiple of 16 up to 256, then 16
evenly spaced sizes per doubling (at most 1/16 = 6.25% padding)."""


def padded_token_count(num_tokens: int) -> int:
    """The smallest bucket holding `num_tokens` (see `PAD_STEPS_PER_OCTAVE`)."""
    if num_tokens <= 256:
        return -(-num_tokens // 16) * 16
    step = (1 << (num_tokens.bit_length() - 1)) // PAD_STEPS_PER_OCTAVE
    return -(-num_tokens // step) * step


def padded_token_buckets(max_tokens: int) -> list[int]:
    """Every bucket `padded_token_count` can return for 1..`max_tokens` tokens."""
    return sorted({padded_token_count(n) for n in range(1, max_tokens + 1)})


def build_host_batch(batch: Batch, rows: RequestRows, block_size: int, pad_prefill: bool = False) -> HostBatch:
    """Host arrays of `batch`, which must not be empty. With `pad_prefill`, a batch of prefill
    chunks only is padded to `padded_token_count` rows (token 0, position 0, slot -1: nothing
    is written to the cache; attention leaves rows past ``cu_seqlens_q[-1]`` alone), so its
    matmuls see a bounded set of shapes (new GEMM shapes made cuBLAS stall the launching
    thread for milliseconds the first time)."""
    if batch.is_empty:
        raise ValueError("cannot run an empty batch")
    chunks, decodes = batch.prefills, batch.decodes
    nc = len(chunks)
    reqs = [c.request for c in chunks] + decodes
    row_ids, counts, last, entries = rows.gather(reqs)
    bs = block_size
    if nc == 0:  # decode only: one token per sequence
        positions = counts - 1
        seq_lens = counts
        input_ids = np.array(last, dtype=np.int64)
        cu = np.arange(len(decodes) + 1, dtype=np.int32)
        slots = rows.table[row_ids, positions // bs].astype(np.int64) * bs + positions % bs
        sample_rows = np.arange(len(decodes), dtype=np.int64)
        sampled_idx = range(len(decodes))
        max_q = 1
    else:
        q_lens = np.array([c.num_tokens for c in chunks] + [1] * len(decodes), dtype=np.int64)
        starts = np.concatenate([np.array([c.start for c in chunks], dtype=np.int64), counts[nc:] - 1])
        cu = np.zeros(len(reqs) + 1, dtype=np.int64)
        np.cumsum(q_lens, out=cu[1:])
        total = int(cu[-1])
        positions = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1] - starts, q_lens)
        slots = rows.table[np.repeat(row_ids, q_lens), positions // bs].astype(np.int64) * bs + positions % bs
        seq_lens = starts + q_lens
        ids: list[int] = []
        for c in chunks:
            ids.extend(c.request.token_ids(c.start, c.end))
        ids.extend(last[nc:])
        input_ids = np.array(ids, dtype=np.int64)
        if pad_prefill and not decodes:
            pad = padded_token_count(total) - total
            input_ids = np.concatenate([input_ids, np.zeros(pad, dtype=np.int64)])
            positions = np.concatenate([positions, np.zeros(pad, dtype=np.int64)])
            slots = np.concatenate([slots, np.full(pad, -1, dtype=np.int64)])
        sampled_idx = [i for i, c in enumerate(chunks) if c.is_last] + list(range(nc, len(reqs)))
        sample_rows = cu[1:][sampled_idx] - 1
        cu = cu.astype(np.int32)
        max_q = int(q_lens.max())
    max_k = int(seq_lens.max())
    width = -(-max_k // bs)
    sampled = [reqs[i] for i in sampled_idx]
    return HostBatch(
        is_decode=nc == 0, input_ids=input_ids, positions=positions, slot_mapping=slots,
        seq_lens=seq_lens.astype(np.int32), cu_seqlens_q=cu, block_tables=rows.table[row_ids, :width],
        sample_rows=sample_rows,
        sampling=HostSampling.of([entries[i] for i in sampled_idx], sampled, rows.vocab_size),
        sampled=sampled, max_seqlen_q=max_q, max_seqlen_k=max_k,
    )
