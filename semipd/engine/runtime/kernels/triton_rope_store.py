"""RoPE on q (in place) fused with the K/V cache write of the rotated k and of v, in Triton.

One program per token: it rotates the token's query heads in place and writes its key
heads, rotated, and its value heads into the paged caches at the token's slot (slot -1
writes nothing). One launch instead of `apply_rope` + `store_kvcache`; k itself is left
as it was (attention reads keys from the cache).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from semipd.engine.runtime.kernels._dispatch import check_rope_args
from semipd.engine.runtime.kernels.triton_rope import _cos_sin, _rotate


@triton.jit
def _rope_store_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    pos_ptr,
    cache_ptr,
    slot_ptr,
    k_cache_ptr,
    v_cache_ptr,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_cache,
    num_q_heads,
    num_kv_heads,
    half,
    BLOCK_HQ: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    cos, sin = _cos_sin(cache_ptr, pos_ptr, t, stride_cache, half, BLOCK_HALF)
    _rotate(q_ptr, stride_qt, stride_qh, t, num_q_heads, half, cos, sin, BLOCK_HQ, BLOCK_HALF)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, BLOCK_HK)[:, None]
        d = tl.arange(0, BLOCK_HALF)[None, :]
        mask = (h < num_kv_heads) & (d < half)
        src = k_ptr + t * stride_kt + h * stride_kh + d
        k1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
        k2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
        head_dim = 2 * half
        dst = slot * num_kv_heads * head_dim + h * head_dim + d
        out_ty = k_cache_ptr.dtype.element_ty
        # Round through k's dtype first, as the unfused path stores the rotated k it wrote back.
        tl.store(k_cache_ptr + dst, (k1 * cos - k2 * sin).to(k_ptr.dtype.element_ty).to(out_ty), mask=mask)
        tl.store(k_cache_ptr + dst + half, (k2 * cos + k1 * sin).to(k_ptr.dtype.element_ty).to(out_ty), mask=mask)
        vsrc = v_ptr + t * stride_vt + h * stride_vh + d
        tl.store(v_cache_ptr + dst, tl.load(vsrc, mask=mask).to(out_ty), mask=mask)
        tl.store(v_cache_ptr + dst + half, tl.load(vsrc + half, mask=mask).to(out_ty), mask=mask)


def rope_and_store_kvcache_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    cos_sin_cache: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Rotate q [T, Hq, D] in place; write rotated k and v [T, Hkv, D] to the contiguous caches."""
    check_rope_args(q, k, positions, cos_sin_cache)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or cos_sin_cache.stride(-1) != 1:
        raise ValueError("rope_and_store_kvcache: q, k, v and cos_sin_cache must be contiguous in the last dim")
    if not (k_cache.is_contiguous() and v_cache.is_contiguous()):
        raise ValueError("rope_and_store_kvcache: k_cache and v_cache must be contiguous")
    num_tokens, half = q.shape[0], q.shape[-1] // 2
    if num_tokens == 0:
        return
    _rope_store_kernel[(num_tokens,)](
        q, k, v, positions, cos_sin_cache, slot_mapping, k_cache, v_cache,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), cos_sin_cache.stride(0),
        q.shape[1], k.shape[1], half,
        BLOCK_HQ=triton.next_power_of_2(q.shape[1]),
        BLOCK_HK=triton.next_power_of_2(k.shape[1]),
        BLOCK_HALF=triton.next_power_of_2(half),
        num_warps=4,
    )
