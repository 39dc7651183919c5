"""Writing new K/V into the paged cache (torch reference and dispatcher).

Cache layout (see `semipd.engine.runtime.attention.base`): ``[num_blocks, block_size, num_kv_heads,
head_dim]``; slot ``s`` is row ``s`` of the cache flattened over its first two dims.
"""

from __future__ import annotations

import torch

from semipd.engine.runtime.kernels._dispatch import use_triton


def store_kvcache_torch(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write k, v [T, Hkv, D] to their slots; a slot of -1 is skipped.

    Never synchronises with the host (CUDA-graph safe): a skipped row is redirected to the
    first valid row's slot and value, so duplicate writes carry identical data; when no row
    is valid every write goes to slot 0 with slot 0's current contents.
    """
    num_tokens = k.shape[0]
    if num_tokens == 0:
        return
    slots = slot_mapping.long()
    valid = slots >= 0
    first_valid = torch.argmax(valid.to(torch.int32))
    rows = torch.where(valid, torch.arange(num_tokens, device=k.device), first_valid)
    dst = slots[rows].clamp(min=0)
    keep = valid[rows].view(-1, 1, 1)
    for src, cache in ((k, k_cache), (v, v_cache)):
        flat = cache.view(-1, *cache.shape[2:])
        flat.index_copy_(0, dst, torch.where(keep, src[rows].to(cache.dtype), flat[dst]))


def store_kvcache(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor
) -> None:
    """Write k, v [T, Hkv, D] into the paged caches at `slot_mapping` (-1 skipped)."""
    if use_triton(k):
        from semipd.engine.runtime.kernels.triton_kvcache import store_kvcache_triton

        store_kvcache_triton(k, v, k_cache, v_cache, slot_mapping)
        return
    store_kvcache_torch(k, v, k_cache, v_cache, slot_mapping)
