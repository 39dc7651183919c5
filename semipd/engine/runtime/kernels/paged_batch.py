"""Random paged-attention batches for kernel tests, the GPU check script and benchmarks.

A batch has, per sequence, ``seq_len`` tokens of which the last ``q_len`` are new: the
prefix K/V are already in the cache, the new K/V are returned beside q for the backend to
store. Blocks are drawn from a shuffled pool, so a sequence's pages are not contiguous.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from semipd.engine.runtime.attention.base import AttentionMetadata


@dataclass
class PagedBatch:
    """Tensors of one flattened batch (see `semipd.engine.runtime.attention.base`)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    cu_seqlens_q: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int

    def metadata(self) -> AttentionMetadata:
        """The batch as `AttentionMetadata` (decode when every sequence has one new token)."""
        return AttentionMetadata(
            is_decode=self.max_seqlen_q == 1 and self.q.shape[0] == self.seq_lens.shape[0],
            slot_mapping=self.slot_mapping,
            block_tables=self.block_tables,
            seq_lens=self.seq_lens,
            cu_seqlens_q=self.cu_seqlens_q,
            max_seqlen_q=self.max_seqlen_q,
            max_seqlen_k=self.max_seqlen_k,
        )

    def kv_bytes(self) -> int:
        """Bytes of K and V that attention over this batch reads from the cache."""
        per_token = 2 * self.k_cache.shape[2] * self.k_cache.shape[3] * self.k_cache.element_size()
        return int(self.seq_lens.sum()) * per_token


def make_paged_batch(
    seq_lens: Sequence[int],
    q_lens: Sequence[int],
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    seed: int = 0,
    spare_blocks: int = 3,
) -> PagedBatch:
    """Build a random batch; `q_lens[i] <= seq_lens[i]`, both per sequence."""
    if len(seq_lens) != len(q_lens):
        raise ValueError("seq_lens and q_lens must have the same length")
    if any(q < 0 or q > s for s, q in zip(seq_lens, q_lens, strict=True)):
        raise ValueError("every q_len must lie in [0, seq_len]")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")
    gen = torch.Generator().manual_seed(seed)
    values_gen = torch.Generator(device=device).manual_seed(seed)
    blocks_per_seq = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    pool = torch.randperm(num_blocks, generator=gen)
    max_blocks = max(blocks_per_seq, default=0) + 1
    block_tables = torch.zeros(len(seq_lens), max_blocks, dtype=torch.int32)
    used = 0
    for i, n in enumerate(blocks_per_seq):
        block_tables[i, :n] = pool[used : used + n]
        used += n

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=values_gen, device=device).to(dtype)

    cache_shape = (num_blocks, block_size, num_kv_heads, head_dim)
    k_cache, v_cache = rand(*cache_shape), rand(*cache_shape)  # prefix (and garbage elsewhere)
    new_slots = []
    for i, (s, q) in enumerate(zip(seq_lens, q_lens, strict=True)):
        pos = torch.arange(s - q, s)
        new_slots.append(block_tables[i, pos // block_size].long() * block_size + pos % block_size)
    total = sum(q_lens)
    cu = torch.zeros(len(q_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(list(q_lens), dtype=torch.int64), 0).to(torch.int32)
    return PagedBatch(
        q=rand(total, num_heads, head_dim),
        k=rand(total, num_kv_heads, head_dim),
        v=rand(total, num_kv_heads, head_dim),
        k_cache=k_cache,
        v_cache=v_cache,
        slot_mapping=(torch.cat(new_slots) if new_slots else torch.zeros(0, dtype=torch.int64)).to(device),
        block_tables=block_tables.to(device),
        seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32).to(device),
        cu_seqlens_q=cu.to(device),
        max_seqlen_q=max(q_lens, default=0),
        max_seqlen_k=max(seq_lens, default=0),
    )
