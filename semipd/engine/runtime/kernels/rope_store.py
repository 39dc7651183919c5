"""RoPE fused with the K/V cache write (torch reference and dispatcher).

``rope_and_store_kvcache`` = `apply_rope` on q and k, then `store_kvcache` of the rotated
k and v: what an attention layer does before attending over the paged cache, in one
launch on CUDA. q is rotated in place; k's contents afterwards are unspecified (the
reference rotates it in place, the Triton kernel leaves it), since attention reads keys
from the cache.
"""

from __future__ import annotations

import torch

from semipd.engine.runtime.kernels._dispatch import use_triton
from semipd.engine.runtime.kernels.kvcache import store_kvcache_torch
from semipd.engine.runtime.kernels.rope import apply_rope_torch


def rope_and_store_kvcache_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                                 cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                                 slot_mapping: torch.Tensor) -> None:
    apply_rope_torch(q, k, positions, cos_sin_cache)
    store_kvcache_torch(k, v, k_cache, v_cache, slot_mapping)


def rope_and_store_kvcache(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                           cos_sin_cache: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           slot_mapping: torch.Tensor) -> None:
    """Rotate q [T, Hq, D] in place and write rotated k and v [T, Hkv, D] to their slots (-1 skipped):
    one Triton kernel on CUDA, the torch reference elsewhere."""
    if use_triton(q):
        from semipd.engine.runtime.kernels.triton_rope_store import rope_and_store_kvcache_triton

        rope_and_store_kvcache_triton(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
        return
    rope_and_store_kvcache_torch(q, k, v, positions, cos_sin_cache, k_cache, v_cache, slot_mapping)
