"""The Triton attention backend ("triton"): paged prefill/extend and split-KV decode kernels.

Mixed batches (prefill chunks, then decode rows: ``meta.num_decodes``) run the prefill
kernel on the chunks and the decode kernel on the decode rows, which reads each K/V tile
once per group of query heads sharing it instead of once per query head.

Needs CUDA tensors (or ``TRITON_INTERPRET=1`` on CPU, for tests). The decode path launches
a fixed number of kernels whose grid depends only on shapes and ``meta.max_seqlen_k``, so
it can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch

from semipd.engine.runtime.attention.base import AttentionBackend, AttentionMetadata
from semipd.engine.runtime.kernels.triton_decode_attention import DecodeConfig, decode_attention_triton
from semipd.engine.runtime.kernels.triton_prefill_attention import PrefillConfig, prefill_attention_triton


class TritonAttentionBackend(AttentionBackend):
    """Runs the prefill kernel, the decode kernel, or both on the two parts of a mixed batch."""

    name = "triton"

    def __init__(self, prefill_config: PrefillConfig | None = None, decode_config: DecodeConfig | None = None):
        self.prefill_config = prefill_config
        self.decode_config = decode_config

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
            return self._decode(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.max_seqlen_k, scale,
                                out=out)
        n = meta.num_decodes
        batch = meta.seq_lens.shape[0]
        if n == 0 or n >= batch:
            return prefill_attention_triton(q, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.cu_seqlens_q,
                                            meta.max_seqlen_q, scale, config=self.prefill_config, out=out)
        # Mixed batch: the prefill kernel for the chunks, the decode kernel (each K/V tile read
        # once per group of query heads) for the decode rows at the end.
        split, rows = batch - n, q.shape[0] - n
        if out is None:
            out = torch.empty_like(q)
        prefill_attention_triton(q[:rows], k_cache, v_cache, meta.block_tables[:split], meta.seq_lens[:split],
                                 meta.cu_seqlens_q[:split + 1], meta.max_seqlen_q, scale,
                                 config=self.prefill_config, out=out[:rows])
        self._decode(q[rows:], k_cache, v_cache, meta.block_tables[split:], meta.seq_lens[split:], meta.max_seqlen_k,
                     scale, out=out[rows:])
        return out

    def _decode(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, block_tables: torch.Tensor,
                seq_lens: torch.Tensor, max_seqlen_k: int, scale: float,
                out: torch.Tensor | None = None) -> torch.Tensor:
        return decode_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, max_seqlen_k, scale,
                                       config=self.decode_config, out=out)
