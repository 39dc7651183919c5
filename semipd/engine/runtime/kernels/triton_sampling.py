"""Greedy and temperature sampling of logits rows in Triton (Gumbel-max, no top-k / top-p).

The same draw as `semipd.engine.runtime.sampler.sample_tokens_torch`: row ``b`` takes
``argmax(logits[b] / T_b + g)`` with Gumbel noise ``g = -log(-log(u))``, where ``u`` is the
counter-based hash of (seed, step, column) of `semipd.engine.runtime.sampler.uniform_noise`; rows
with ``T_b`` below `GREEDY_TEMPERATURE` (0 included) take ``argmax(logits[b])``. Ties go to the
lowest column, as ``torch.argmax``.

Two launches whose grids depend on shapes only (CUDA-graph safe, no host synchronisation):
stage 1 reduces chunks of ``BLOCK_V`` columns of each row to (max, argmax); stage 2 reduces
the chunks of a row. Logits are read once, in their own dtype, and never copied.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from semipd.engine.sampling_params import GREEDY_TEMPERATURE

_BLOCK_V = 4096


@triton.jit
def _mul32(x, c: tl.constexpr):
    return (x * c) & 0xFFFFFFFF


@triton.jit
def _hash32(x):
    """lowbias32 on uint64 values below 2**32 (products wrap mod 2**64; the low 32 bits are exact)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


@triton.jit
def _sample_stage1(
    logits_ptr,
    temps_ptr,
    seeds_ptr,
    steps_ptr,
    part_val_ptr,
    part_idx_ptr,
    stride_l,
    vocab,
    num_chunks,
    MIN_TEMP: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = cols < vocab
    x = tl.load(logits_ptr + row * stride_l + cols, mask=mask, other=float("-inf")).to(tl.float32)
    temp = tl.load(temps_ptr + row)
    if temp >= MIN_TEMP:
        seed = tl.load(seeds_ptr + row).to(tl.uint64, bitcast=True)
        step = tl.load(steps_ptr + row).to(tl.uint64, bitcast=True)
        lo = seed & 0xFFFFFFFF
        hi = (seed >> 32) & 0xFFFFFFFF
        key = _hash32(lo ^ _hash32(hi ^ _hash32(step & 0xFFFFFFFF)))
        col_hash = _hash32(cols.to(tl.uint64) ^ 0x9E3779B9)
        bits = _hash32(key ^ col_hash) >> 8
        u = (bits.to(tl.float32) + 0.5) * (1.0 / 16777216.0)
        gumbel = -tl.log(-tl.log(u))
        x = tl.where(mask, x / temp + gumbel, float("-inf"))
    best = tl.max(x, axis=0)
    idx = tl.min(tl.where(x == best, cols, vocab), axis=0)
    tl.store(part_val_ptr + row * num_chunks + chunk, best)
    tl.store(part_idx_ptr + row * num_chunks + chunk, idx)


@triton.jit
def _sample_stage2(part_val_ptr, part_idx_ptr, out_ptr, num_chunks, vocab, BLOCK_C: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < num_chunks
    vals = tl.load(part_val_ptr + row * num_chunks + offs, mask=mask, other=float("-inf"))
    idxs = tl.load(part_idx_ptr + row * num_chunks + offs, mask=mask, other=vocab)
    best = tl.max(vals, axis=0)
    idx = tl.min(tl.where(vals == best, idxs, vocab), axis=0)
    tl.store(out_ptr + row, tl.minimum(idx, vocab - 1).to(tl.int64))


def sample_tokens_triton(logits: torch.Tensor, temperatures: torch.Tensor, seeds: torch.Tensor,
                         steps: torch.Tensor) -> torch.Tensor:
    """[B, V] logits (any float dtype, unit stride along V), [B] float32 temperatures,
    [B] int64 seeds and steps -> [B] int64 token ids."""
    if logits.dim() != 2 or logits.stride(1) != 1:
        raise ValueError("sample_tokens: logits must be [B, V] with unit stride along V")
    batch, vocab = logits.shape
    out = torch.empty(batch, dtype=torch.int64, device=logits.device)
    if batch == 0:
        return out
    num_chunks = triton.cdiv(vocab, _BLOCK_V)
    part_val = torch.empty(batch, num_chunks, dtype=torch.float32, device=logits.device)
    part_idx = torch.empty(batch, num_chunks, dtype=torch.int32, device=logits.device)
    _sample_stage1[(batch, num_chunks)](
        logits, temperatures, seeds, steps, part_val, part_idx, logits.stride(0), vocab, num_chunks,
        MIN_TEMP=GREEDY_TEMPERATURE, BLOCK_V=_BLOCK_V, num_warps=8,
    )
    _sample_stage2[(batch,)](part_val, part_idx, out, num_chunks, vocab,
                             BLOCK_C=max(16, triton.next_power_of_2(num_chunks)), num_warps=1)
    return out
