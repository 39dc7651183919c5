"""The Triton attention backend ("triton"): paged prefill/extend and split-KV decode kernels.

Needs CUDA tensors (or ``TRITON_INTERPRET=1`` on CPU, for tests). The decode path launches
a fixed number of kernels whose grid depends only on shapes and ``meta.max_seqlen_k``, so
it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from semipd.engine.attention.base import AttentionBackend, AttentionMetadata, register_backend
from semipd.engine.kernels.triton_decode_attention import DecodeConfig, decode_attention_triton
from semipd.engine.kernels.triton_kvcache import store_kvcache_triton
from semipd.engine.kernels.triton_prefill_attention import PrefillConfig, prefill_attention_triton


@register_backend("triton")
class TritonAttentionBackend(AttentionBackend):
    """Stores K/V with a Triton scatter, then runs the prefill or the decode kernel."""

    name = "triton"

    def __init__(self, prefill_config: PrefillConfig | None = None, decode_config: DecodeConfig | None = None):
        self.prefill_config = prefill_config
        self.decode_config = decode_config

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
        store_kvcache_triton(k, v, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode:
            return decode_attention_triton(
                q,
                k_cache,
                v_cache,
                meta.block_tables,
                meta.seq_lens,
                meta.max_seqlen_k,
                scale,
                config=self.decode_config,
            )
        return prefill_attention_triton(
            q,
            k_cache,
            v_cache,
            meta.block_tables,
            meta.seq_lens,
            meta.cu_seqlens_q,
            meta.max_seqlen_q,
            scale,
            config=self.prefill_config,
        )
