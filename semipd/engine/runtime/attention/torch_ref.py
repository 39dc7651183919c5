"""The reference attention backend ("torch"): plain torch over the paged KV cache.

It gathers each sequence's cached K/V (the new tokens' stored first) through its block
table and applies causal attention with the position rule of
`semipd.engine.runtime.attention.base` (query row j of sequence i sits at position
``seq_lens[i] - q_len_i + j``). Arithmetic is fp32; the output has q's dtype. It is the CPU
engine's backend and the oracle the Triton kernels are tested against.
"""

from __future__ import annotations

import torch

from semipd.engine.runtime.attention.base import AttentionBackend, AttentionMetadata

_SCORE_BUDGET = 1 << 26
"""Score elements (fp32) computed at once per sequence; longer prefills go in query chunks."""


def _gather_slots(block_tables: torch.Tensor, positions: torch.Tensor, block_size: int) -> torch.Tensor:
    """Cache slots of `positions` ([..., n] or [n]) through the block tables ([..., max_blocks])."""
    cols = torch.div(positions, block_size, rounding_mode="floor").clamp(max=block_tables.shape[-1] - 1)
    return block_tables[..., cols].long() * block_size + positions % block_size


def paged_decode_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    max_seqlen_k: int,
    scale: float,
) -> torch.Tensor:
    """One query per sequence: q [B, Hq, D] attends to its `seq_lens[b]` cached tokens.

    Vectorised over the batch with padding to `max_seqlen_k` (an upper bound is fine); no
    host synchronisation. A sequence of length 0 yields zeros.
    """
    batch, num_heads, head_dim = q.shape
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    positions = torch.arange(max_seqlen_k, device=q.device)
    slots = _gather_slots(block_tables, positions, block_size)  # [B, K]
    k = k_cache.view(-1, num_kv_heads, head_dim)[slots].float()  # [B, K, Hkv, D]
    v = v_cache.view(-1, num_kv_heads, head_dim)[slots].float()
    qg = q.view(batch, num_kv_heads, group, head_dim).float()
    scores = torch.einsum("bhgd,bkhd->bhgk", qg, k) * scale
    mask = (positions[None, :] < seq_lens[:, None].long()).view(batch, 1, 1, -1)
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    probs = torch.where(mask, probs, 0.0)  # rows with no key at all: zeros instead of NaN
    out = torch.einsum("bhgk,bkhd->bhgd", probs, v)
    return out.reshape(batch, num_heads, head_dim).to(q.dtype)


def paged_prefill_attention_torch(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Variable-length causal attention of the flattened q [T, Hq, D] over the paged cache.

    Loops over sequences (reads lengths on the host); long sequences are computed in query
    chunks so that memory stays bounded. Rows outside ``cu_seqlens_q[-1]`` are zero.
    """
    num_heads, head_dim = q.shape[1], q.shape[2]
    block_size, num_kv_heads = k_cache.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    out = torch.zeros_like(q)
    flat_k = k_cache.view(-1, num_kv_heads, head_dim)
    flat_v = v_cache.view(-1, num_kv_heads, head_dim)
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        start, end = cu[i], cu[i + 1]
        q_len = end - start
        if q_len == 0:
            continue
        if q_len > seq_len:
            raise ValueError(f"sequence {i}: {q_len} new tokens but seq_len {seq_len}")
        key_pos = torch.arange(seq_len, device=q.device)
        slots = _gather_slots(block_tables[i], key_pos, block_size)
        k = flat_k[slots].float()
        v = flat_v[slots].float()
        chunk = max(1, _SCORE_BUDGET // (num_heads * seq_len))
        for c0 in range(0, q_len, chunk):
            c1 = min(q_len, c0 + chunk)
            qg = q[start + c0 : start + c1].view(c1 - c0, num_kv_heads, group, head_dim).float()
            scores = torch.einsum("qhgd,khd->hgqk", qg, k) * scale
            q_pos = torch.arange(seq_len - q_len + c0, seq_len - q_len + c1, device=q.device)
            causal = key_pos[None, :] <= q_pos[:, None]
            probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            o = torch.einsum("hgqk,khd->qhgd", probs, v)
            out[start + c0 : start + c1] = o.reshape(c1 - c0, num_heads, head_dim).to(q.dtype)
    return out


class TorchAttentionBackend(AttentionBackend):
    """Reference backend; decode is vectorised and host-sync free, prefill loops over sequences."""

    name = "torch"

    def attend(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if meta.is_decode:
            result = paged_decode_attention_torch(
                q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.max_seqlen_k, scale
            )
        else:
            result = paged_prefill_attention_torch(
                q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q, scale
            )
        return result if out is None else out.copy_(result)
