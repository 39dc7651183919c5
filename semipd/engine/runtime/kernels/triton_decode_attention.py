"""Paged decode attention in Triton (flash-decoding: split-KV, then a reduce).

Stage 1 runs one program per (sequence, kv head, split): it loads the queries of all
``num_heads / num_kv_heads`` heads that share the kv head (padded to 16 rows for the tensor
cores), so each K/V tile is read once for the whole group, and walks its share of the
sequence's pages. With one split it writes the normalised output directly; otherwise it
writes a partial output and its log-sum-exp, and stage 2 merges the splits.

No host synchronisation: the split count is a function of the batch shape and the static
bound `max_seqlen_k` only, never of the sequence lengths, so the launch can be captured in
a CUDA graph. Each split covers ``ceil(seq_len / num_splits)`` tokens of its sequence,
rounded up to whole key tiles, computed on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from semipd.engine.runtime.kernels._dispatch import check_launch_config, device_sm_count


@dataclass(frozen=True)
class DecodeConfig:
    """Tiling and split policy of the decode kernel."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 2
    max_splits: int = 32
    min_tokens_per_split: int = 256
    waves: int = 2
    """Aim for at least ``waves * num_sms`` stage-1 programs when splitting."""

    def __post_init__(self) -> None:
        check_launch_config(self, ("block_n",), ("num_stages", "max_splits", "min_tokens_per_split", "waves"))


def num_decode_splits(
    batch: int, num_kv_heads: int, max_seqlen_k: int, num_sms: int, config: DecodeConfig | None = None
) -> int:
    """Splits per sequence: enough programs to fill `num_sms` SMs, each split at least
    `min_tokens_per_split` keys of `max_seqlen_k`, at most `max_splits`. Static inputs only."""
    cfg = config or DecodeConfig()
    programs = max(1, batch * num_kv_heads)
    want = triton.cdiv(cfg.waves * num_sms, programs)
    cap = triton.cdiv(max(1, max_seqlen_k), cfg.min_tokens_per_split)
    return max(1, min(want, cap, cfg.max_splits))


@triton.jit
def _decode_stage1(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    qk_scale,
    stride_qb,
    stride_qh,
    stride_ob,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_bt,
    head_dim,
    GROUP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    NUM_STAGES: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + seq)
    per_split = tl.cdiv(tl.cdiv(seq_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    start = split * per_split
    end = tl.minimum(start + per_split, seq_len)

    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    h_mask = offs_h < GROUP
    d_mask = offs_d < head_dim
    heads = kv_head * GROUP + offs_h
    q = tl.load(
        q_ptr + seq * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
        mask=h_mask[:, None] & d_mask[None, :],
        other=0.0,
    )
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    k_base = k_cache_ptr + kv_head * stride_kh
    v_base = v_cache_ptr + kv_head * stride_kh
    bt_row = block_tables_ptr + seq * stride_bt
    for start_n in tl.range(start, end, BLOCK_N, num_stages=NUM_STAGES):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_mask = offs_n < end
        blk = tl.load(bt_row + offs_n // PAGE, mask=n_mask, other=0).to(tl.int64)
        slot_off = blk * stride_kb + (offs_n % PAGE) * stride_ks
        k = tl.load(k_base + slot_off[None, :] + offs_d[:, None], mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + slot_off[:, None] + offs_d[None, :], mask=n_mask[:, None] & d_mask[None, :], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        m_i = m_new

    has_keys = end > start
    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    hd_mask = h_mask[:, None] & d_mask[None, :]
    if NUM_SPLITS == 1:
        # An empty sequence leaves acc at zero, so the output is zero.
        tl.store(
            out_ptr + seq * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=hd_mask,
        )
    else:
        row = (seq * tl.num_programs(1) * GROUP + heads) * NUM_SPLITS + split  # mid layout [B, Hq, S]
        tl.store(mid_o_ptr + row[:, None] * BLOCK_D + offs_d[None, :], out, mask=hd_mask)
        lse = tl.where(has_keys, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        tl.store(mid_lse_ptr + row, lse, mask=h_mask)


@triton.jit
def _decode_stage2(
    out_ptr,
    mid_o_ptr,
    mid_lse_ptr,
    stride_ob,
    stride_oh,
    num_heads,
    head_dim,
    BLOCK_D: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
):
    seq = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1)
    base = (seq * num_heads + head) * NUM_SPLITS
    offs_s = tl.arange(0, NUM_SPLITS)
    lse = tl.load(mid_lse_ptr + base + offs_s)
    lse_max = tl.max(lse, axis=0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weights = tl.exp2(lse - lse_max)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    parts = tl.load(
        mid_o_ptr + (base + offs_s)[:, None] * BLOCK_D + offs_d[None, :],
        mask=(weights > 0.0)[:, None] & d_mask[None, :],
        other=0.0,
    )
    total = tl.sum(weights, axis=0)
    out = tl.sum(parts * weights[:, None], axis=0) / tl.where(total > 0.0, total, 1.0)
    tl.store(out_ptr + seq * stride_ob + head * stride_oh + offs_d, out.to(out_ptr.dtype.element_ty), mask=d_mask)


def decode_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seqlen_k: int,
    scale: float,
    num_splits: int | None = None,
    config: DecodeConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One query per sequence: q [B, Hq, D] over the paged caches; returns [B, Hq, D]
    (written into `out` when given: [B, Hq, D], head_dim contiguous).

    `max_seqlen_k` is a static bound on ``seq_lens`` (it only sets the split count);
    `num_splits` overrides the split policy. The split count is rounded up to a power of
    two. A sequence of length 0 yields zeros.
    """
    batch, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("decode attention: caches must share a layout; head_dim must be contiguous")
    cfg = config or DecodeConfig()
    if num_splits is None:
        num_splits = num_decode_splits(batch, num_kv_heads, max_seqlen_k, device_sm_count(q.device), cfg)
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError("decode attention: out must have q's shape, head_dim contiguous")
    if batch == 0:
        return out
    group = num_heads // num_kv_heads
    block_d = max(16, triton.next_power_of_2(head_dim))
    splits = triton.next_power_of_2(num_splits)
    if splits > 1:
        mid_o = torch.empty((batch, num_heads, splits, block_d), dtype=torch.float32, device=q.device)
        mid_lse = torch.empty((batch, num_heads, splits), dtype=torch.float32, device=q.device)
    else:
        mid_o = mid_lse = out
    _decode_stage1[(batch, num_kv_heads, splits)](
        q,
        k_cache,
        v_cache,
        out,
        mid_o,
        mid_lse,
        block_tables,
        seq_lens,
        scale * math.log2(math.e),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        head_dim,
        GROUP=group,
        BLOCK_H=max(16, triton.next_power_of_2(group)),
        PAGE=page,
        BLOCK_D=block_d,
        BLOCK_N=cfg.block_n,
        NUM_SPLITS=splits,
        NUM_STAGES=cfg.num_stages,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
    )
    if splits > 1:
        _decode_stage2[(batch, num_heads)](
            out,
            mid_o,
            mid_lse,
            out.stride(0),
            out.stride(1),
            num_heads,
            head_dim,
            BLOCK_D=block_d,
            NUM_SPLITS=splits,
            num_warps=4,
        )
    return out
