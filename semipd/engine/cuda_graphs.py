"""`GraphRunner`: decode steps replayed from CUDA graphs, one per batch-size bucket.

A decode batch of ``n`` requests runs in the graph of the smallest bucket ``>= n``
(buckets 1, 2, 4, 8, 16, 24, 32, ... up to ``max_num_seqs``); the extra rows are padding
(slot -1: nothing is written; sequence length 1 over block 0: their output is ignored).
Inputs go through static buffers that every graph reads; all graphs share one memory
pool, captured largest first so the smaller ones reuse its memory. The captured
attention metadata has a fixed ``max_seqlen_k`` (``max_model_len``), as the decode kernel
must not look at the data to size its work.

Graph sets are keyed: `capture(key, stream)` captures one set on a stream, and a graph
keeps the SMs of the stream it was captured on, so a Semi-PD decode worker captures one
set per SM partition and replays the set of its current partition. Without CUDA (or
before any capture) `run` executes the same padded batch eagerly, so the buffer logic is
the same on every device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

import torch

from semipd.engine.attention.base import AttentionMetadata
from semipd.engine.kv_cache import KVCache
from semipd.engine.model.llama import LlamaForCausalLM

logger = logging.getLogger(__name__)


def decode_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to `max_num_seqs` (included even if not a multiple)."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    buckets = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 8))
    return [*buckets, max_num_seqs]


class GraphRunner:
    """Owns the decode graphs of one model + KV cache, their static inputs and memory pool."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_num_seqs: int, max_model_len: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        self.buckets = decode_buckets(max_num_seqs)
        device = model.device
        n = self.buckets[-1]
        self.block_size = kv_cache.spec.block_size
        width = -(-max_model_len // self.block_size)
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.block_tables = torch.zeros(n, width, dtype=torch.int32, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=device)
        self._graphs: dict[tuple[Hashable, int], torch.cuda.CUDAGraph] = {}
        self._outputs: dict[tuple[Hashable, int], torch.Tensor] = {}
        self._pool = None
        self.capture_seconds = 0.0

    def _meta(self, bucket: int, max_seqlen_k: int) -> AttentionMetadata:
        return AttentionMetadata(
            is_decode=True, slot_mapping=self.slot_mapping[:bucket], block_tables=self.block_tables[:bucket],
            seq_lens=self.seq_lens[:bucket], cu_seqlens_q=self.cu_seqlens_q[:bucket + 1],
            max_seqlen_q=1, max_seqlen_k=max_seqlen_k,
        )

    def _forward(self, bucket: int, max_seqlen_k: int) -> torch.Tensor:
        return self.model(self.input_ids[:bucket], self.positions[:bucket], self.kv_cache.layers,
                          self._meta(bucket, max_seqlen_k))

    @property
    def keys(self) -> list[Hashable]:
        return sorted({k for k, _ in self._graphs}, key=repr)

    @torch.inference_mode()
    def capture(self, key: Hashable = "default", stream: torch.cuda.Stream | None = None) -> None:
        """Capture one graph per bucket under `key` on `stream` (default: a side stream)."""
        if self.model.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        start = time.perf_counter()
        stream = stream or torch.cuda.Stream(self.model.device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        self.slot_mapping.fill_(-1)
        self.seq_lens.fill_(1)
        for bucket in reversed(self.buckets):
            with torch.cuda.stream(stream):
                self._forward(bucket, self.max_model_len)  # warm-up: lazy init, autotuning
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                out = self._forward(bucket, self.max_model_len)
            self._graphs[(key, bucket)] = graph
            self._outputs[(key, bucket)] = out
        torch.cuda.synchronize(self.model.device)
        self.capture_seconds += time.perf_counter() - start
        logger.info("captured %d decode graphs (key %r) in %.2f s", len(self.buckets), key,
                    time.perf_counter() - start)

    def can_run(self, batch_size: int) -> bool:
        return batch_size <= self.buckets[-1]

    def bucket_for(self, batch_size: int) -> int:
        for b in self.buckets:
            if b >= batch_size:
                return b
        raise ValueError(f"batch of {batch_size} exceeds the largest decode graph ({self.buckets[-1]})")

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
            key: Hashable = "default") -> torch.Tensor:
        """Hidden states [bucket, hidden] of a decode batch (rows past the batch are padding):
        a graph replay when `key` was captured, else the same padded batch run eagerly."""
        n = input_ids.shape[0]
        bucket = self.bucket_for(n)
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids, non_blocking=True)
        self.positions[:n].copy_(positions, non_blocking=True)
        self.slot_mapping[:n].copy_(meta.slot_mapping, non_blocking=True)
        self.slot_mapping[n:bucket].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens, non_blocking=True)
        self.seq_lens[n:bucket].fill_(1)
        self.block_tables[:n, :width].copy_(meta.block_tables, non_blocking=True)
        self.block_tables[n:bucket].zero_()
        graph = self._graphs.get((key, bucket))
        if graph is None:
            return self._forward(bucket, meta.max_seqlen_k)
        graph.replay()
        return self._outputs[(key, bucket)]
