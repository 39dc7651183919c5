"""Paged prefill / extend attention in Triton (flash-attention style, online softmax).

One program computes `BLOCK_M` query rows of one sequence for one query head. Keys come from
the paged cache through the block table (the new tokens must be stored first), so a prefix
cached by earlier chunks is attended to like the new tokens. Causality follows the position
rule of `semipd.engine.runtime.attention.base`. The key loop runs in two phases: blocks wholly below
the diagonal need no mask; the rest are masked. fp32 accumulation; output in q's dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from semipd.engine.runtime.kernels._dispatch import check_launch_config, device_sm_count


@dataclass(frozen=True)
class PrefillConfig:
    """Tile sizes and launch parameters of the prefill kernel."""

    block_m: int = 128
    block_n: int = 64
    num_warps: int = 8
    num_stages: int = 2

    def __post_init__(self) -> None:
        check_launch_config(self, ("block_m", "block_n"))


def default_prefill_config(head_dim: int, num_programs: int | None = None, num_sms: int = 132) -> PrefillConfig:
    """Tiles measured best on an H100 (benchmarks/results/kernels_h100.json, ``sweep_prefill``).

    head_dim 128: 64x64 tiles, within 2% of the best everywhere and far ahead on small grids.
    head_dim <= 64: 128x64 tiles, unless that gives fewer programs (``num_programs``) than
    the GPU has SMs; then 64x64.
    """
    small = PrefillConfig(block_m=64, block_n=64, num_warps=4, num_stages=3)
    if head_dim > 64 or (num_programs is not None and num_programs < num_sms):
        return small
    return PrefillConfig(block_m=128, block_n=64, num_warps=8, num_stages=3)


def auto_prefill_config(head_dim: int, num_heads: int, batch: int, max_seqlen_q: int, num_sms: int) -> PrefillConfig:
    """The config `prefill_attention_triton` uses when given none (shapes only, no data)."""
    programs = num_heads * batch * triton.cdiv(max(max_seqlen_q, 1), 128)
    return default_prefill_config(head_dim, programs, num_sms)


@triton.jit
def _attend_block(
    q,
    acc,
    m_i,
    l_i,
    k_base,
    v_base,
    bt_row,
    start_n,
    q_pos,
    seq_len,
    stride_kb,
    stride_ks,
    offs_d,
    qk_scale,
    MASKED: tl.constexpr,
    EVEN_D: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One key tile of the online softmax. Unmasked tiles (below the diagonal, inside the
    sequence) load without predicates."""
    offs_n = start_n + tl.arange(0, BLOCK_N)
    n_mask = offs_n < seq_len
    if MASKED:
        blk = tl.load(bt_row + offs_n // PAGE, mask=n_mask, other=0).to(tl.int64)
    else:
        blk = tl.load(bt_row + offs_n // PAGE).to(tl.int64)
    slot_off = blk * stride_kb + (offs_n % PAGE) * stride_ks
    k_ptrs = k_base + slot_off[None, :] + offs_d[:, None]
    v_ptrs = v_base + slot_off[:, None] + offs_d[None, :]
    if MASKED or not EVEN_D:
        d_mask = offs_d < HEAD_DIM
        k = tl.load(k_ptrs, mask=n_mask[None, :] & d_mask[:, None], other=0.0)
        v = tl.load(v_ptrs, mask=n_mask[:, None] & d_mask[None, :], other=0.0)
    else:
        k = tl.load(k_ptrs)
        v = tl.load(v_ptrs)
    s = tl.dot(q, k, input_precision=DOT_PRECISION) * qk_scale
    if MASKED:
        s = tl.where((offs_n[None, :] <= q_pos[:, None]) & n_mask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return acc, m_new, l_i


@triton.jit
def _prefill_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    out_ptr,
    block_tables_ptr,
    seq_lens_ptr,
    cu_seqlens_ptr,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_ot,
    stride_oh,
    stride_kb,
    stride_ks,
    stride_kh,
    stride_bt,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    PAGE: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    head = tl.program_id(0)
    pid_m = tl.num_programs(1) - 1 - tl.program_id(1)  # longest (diagonal-heavy) tiles first
    seq = tl.program_id(2)
    q_start = tl.load(cu_seqlens_ptr + seq)
    q_len = tl.load(cu_seqlens_ptr + seq + 1) - q_start
    if pid_m * BLOCK_M < q_len:
        seq_len = tl.load(seq_lens_ptr + seq)
        ctx_len = seq_len - q_len
        kv_head = head // GROUP
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        m_mask = offs_m < q_len
        d_mask = offs_d < HEAD_DIM
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(
            q_ptr + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
            mask=m_mask[:, None] & d_mask[None, :],
            other=0.0,
        )
        q_pos = ctx_len + offs_m
        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        k_base = k_cache_ptr + kv_head * stride_kh
        v_base = v_cache_ptr + kv_head * stride_kh
        bt_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
        # Keys below the first query of this tile are visible to every row: no mask.
        full_end = ((ctx_len + pid_m * BLOCK_M) // BLOCK_N) * BLOCK_N
        for start_n in range(0, full_end, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                q,
                acc,
                m_i,
                l_i,
                k_base,
                v_base,
                bt_row,
                start_n,
                q_pos,
                seq_len,
                stride_kb,
                stride_ks,
                offs_d,
                qk_scale,
                False,
                BLOCK_D == HEAD_DIM,
                HEAD_DIM,
                PAGE,
                BLOCK_N,
                DOT_PRECISION,
            )
        end = tl.minimum(seq_len, ctx_len + (pid_m + 1) * BLOCK_M)
        for start_n in range(full_end, end, BLOCK_N):
            acc, m_i, l_i = _attend_block(
                q,
                acc,
                m_i,
                l_i,
                k_base,
                v_base,
                bt_row,
                start_n,
                q_pos,
                seq_len,
                stride_kb,
                stride_ks,
                offs_d,
                qk_scale,
                True,
                BLOCK_D == HEAD_DIM,
                HEAD_DIM,
                PAGE,
                BLOCK_N,
                DOT_PRECISION,
            )
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(
            out_ptr + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
            out.to(out_ptr.dtype.element_ty),
            mask=m_mask[:, None] & d_mask[None, :],
        )


def prefill_attention_triton(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    max_seqlen_q: int,
    scale: float,
    config: PrefillConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal varlen attention of q [T, Hq, D] over the paged caches; returns [T, Hq, D]
    (written into `out` when given: [T, Hq, D], head_dim contiguous).

    `max_seqlen_q` bounds the new-token count of any sequence (it sizes the grid).
    Rows outside ``cu_seqlens_q[-1]`` are left uninitialised.
    """
    num_tokens, num_heads, head_dim = q.shape
    _, page, num_kv_heads, _ = k_cache.shape
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    if k_cache.stride() != v_cache.stride() or k_cache.stride(-1) != 1 or q.stride(-1) != 1:
        raise ValueError("prefill attention: caches must share a layout; head_dim must be contiguous")
    batch = seq_lens.shape[0]
    cfg = config or auto_prefill_config(head_dim, num_heads, batch, max_seqlen_q, device_sm_count(q.device))
    if out is None:
        out = torch.empty_like(q)
    elif out.shape != q.shape or out.stride(-1) != 1:
        raise ValueError("prefill attention: out must have q's shape, head_dim contiguous")
    if num_tokens == 0 or batch == 0 or max_seqlen_q == 0:
        return out
    grid = (num_heads, triton.cdiv(max_seqlen_q, cfg.block_m), batch)
    _prefill_kernel[grid](
        q,
        k_cache,
        v_cache,
        out,
        block_tables,
        seq_lens,
        cu_seqlens_q,
        scale * math.log2(math.e),
        q.stride(0),
        q.stride(1),
        out.stride(0),
        out.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        block_tables.stride(0),
        GROUP=num_heads // num_kv_heads,
        HEAD_DIM=head_dim,
        PAGE=page,
        BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    return out
