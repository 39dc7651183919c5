"""Neox-style RoPE in place on q and k in Triton: one program per token, all heads."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from semipd.engine.runtime.kernels._dispatch import check_rope_args


@triton.jit
def _rotate(x_ptr, stride_t, stride_h, t, num_heads, half, cos, sin, BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr):
    h = tl.arange(0, BLOCK_H)[:, None]
    d = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (h < num_heads) & (d < half)
    p1 = x_ptr + t * stride_t + h * stride_h + d
    x1 = tl.load(p1, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(p1 + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(p1, (x1 * cos - x2 * sin).to(x_ptr.dtype.element_ty), mask=mask)
    tl.store(p1 + half, (x2 * cos + x1 * sin).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF: tl.constexpr):
    """cos and sin of token `t`'s position, [1, BLOCK_HALF] float32 (0 past `half`)."""
    pos = tl.load(pos_ptr + t).to(tl.int64)
    d = tl.arange(0, BLOCK_HALF)[None, :]
    dmask = d < half
    cos = tl.load(cache_ptr + pos * stride_cache + d, mask=dmask, other=0.0).to(tl.float32)
    sin = tl.load(cache_ptr + pos * stride_cache + half + d, mask=dmask, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _rope_kernel(
    q_ptr,
    k_ptr,
    pos_ptr,
    cache_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_cache,
    num_q_heads,
    num_k_heads,
    half,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF)
    _rotate(q_ptr, stride_qt, stride_qh, t, num_q_heads, half, cos, sin, BLOCK_HQ, BLOCK_HALF)
    _rotate(k_ptr, stride_kt, stride_kh, t, num_k_heads, half, cos, sin, BLOCK_HK, BLOCK_HALF)


def apply_rope_triton(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-place RoPE on q [T, Hq, D], k [T, Hkv, D] (head_dim contiguous); returns (q, k)."""
    check_rope_args(q, k, positions, cos_sin_cache)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or cos_sin_cache.stride(-1) != 1:
        raise ValueError("apply_rope: q, k and cos_sin_cache must be contiguous in the last dim")
    num_tokens, half = q.shape[0], q.shape[-1] // 2
    if num_tokens == 0:
        return q, k
    _rope_kernel[(num_tokens,)](
        q,
        k,
        positions,
        cos_sin_cache,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        cos_sin_cache.stride(0),
        q.shape[1],
        k.shape[1],
        half,
        BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
        BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
    return q, k
