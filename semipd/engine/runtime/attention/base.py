"""The attention backend interface and its registry.

Paged KV cache layout (one tensor pair per layer)::

    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim]

A token at position ``pos`` of a sequence lives in block ``block_table[pos // block_size]``
at offset ``pos % block_size``; its *slot* is ``block * block_size + offset``.

A batch is flattened ("varlen"): the new tokens of all sequences are concatenated.
Sequence ``i`` owns query rows ``cu_seqlens_q[i] : cu_seqlens_q[i+1]``; its new tokens
are the *last* ``q_len_i`` of its ``seq_lens[i]`` tokens, so a query at row ``j`` of
sequence ``i`` has position ``seq_lens[i] - q_len_i + (j - cu_seqlens_q[i])`` and attends
causally to cache positions ``0 .. that position``. This covers plain prefill (no
prefix), chunked prefill / extend (a prefix already cached) and decode (``q_len == 1``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from semipd.engine.runtime.kernels.kvcache import store_kvcache


@dataclass
class AttentionMetadata:
    """Describes one flattened batch; every tensor lives on the model's device."""

    is_decode: bool
    """True when every sequence has exactly one new token (decode kernels apply)."""
    slot_mapping: torch.Tensor
    """[num_tokens] int64: cache slot of each new token; -1 skips the write (padding)."""
    block_tables: torch.Tensor
    """[batch, max_blocks_per_seq] int32; unused entries are 0."""
    seq_lens: torch.Tensor
    """[batch] int32: tokens in the cache after this step (prefix + new)."""
    cu_seqlens_q: torch.Tensor
    """[batch + 1] int32: prefix sums of the new-token counts."""
    max_seqlen_q: int
    """Largest new-token count in the batch (1 for decode)."""
    max_seqlen_k: int
    """Largest `seq_lens` entry (an upper bound is fine, e.g. under CUDA graphs)."""
    num_decodes: int = 0
    """In a batch that is not `is_decode`: how many of its last sequences have exactly one new
    token (decode rows after the prefill chunks), so a backend may attend for them with its
    decode kernel. 0 when unknown."""


class AttentionBackend(ABC):
    """Attends over the paged KV cache; `forward` first stores the new K/V.

    Implementations must not synchronise with the host (no ``.item()``, no
    ``.tolist()``) in `attend` when ``meta.is_decode`` so that decode can be captured
    in a CUDA graph.
    """

    name: str = "?"

    @abstractmethod
    def attend(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal attention of q [T, num_heads, head_dim] over the cache, whose K/V for the new
        tokens are already stored. Returns [T, num_heads, head_dim] in q's dtype, written into
        `out` when given (then it is returned). num_heads is a multiple of num_kv_heads
        (grouped-query attention)."""

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
    ) -> torch.Tensor:
        """Store k, v [T, num_kv_heads, head_dim] at ``meta.slot_mapping``, then `attend`."""
        store_kvcache(k, v, k_cache, v_cache, meta.slot_mapping)
        return self.attend(q, k_cache, v_cache, meta, scale)
