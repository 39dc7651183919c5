"""`GraphRunner`: whole decode steps replayed from CUDA graphs, one per batch-size bucket.

A decode batch of ``n`` requests runs in the graph of the smallest bucket ``>= n``
(buckets 1, 2, 4, 8, 16, 24, 32, ... up to ``max_num_seqs``); the extra rows are padding
(slot -1: nothing is written; sequence length 0: no attention work; their tokens are
ignored). A graph holds the whole step: the model, the LM head and `sample_tokens`
(greedy and temperature sampling), so a step is one host-to-device copy of the packed
inputs (`Staging`), one small copy that widens the block tables, one replay, and the
read-back of the tokens. Batches that use top-k / top-p sample on the host side of the
replay from the static logits.

Inputs live in static device buffers that every graph reads; logits and tokens go to
static buffers too, so graphs do not each hold their own. All graphs share one memory
pool, captured largest first so the smaller ones reuse its memory. The attention
metadata has a fixed ``max_seqlen_k`` (``max_model_len``), as the decode kernel must not
look at the data to size its work.

Graph sets are keyed: `capture(key, stream)` captures one set on a stream, and a graph
keeps the SMs of the stream it was captured on, so a Semi-PD decode worker captures one
set per SM partition and replays the set of its current partition. Without CUDA (or
before any capture) the same padded step runs eagerly over the same buffers, so the
buffer logic is the same on every device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

import numpy as np
import torch

from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata
from semipd.engine.runtime.batch_inputs import HostBatch
from semipd.engine.runtime.graph_buckets import BucketedGraphs
from semipd.engine.runtime.kv_cache import KVCache
from semipd.engine.runtime.sampler import sample_tokens
from semipd.engine.runtime.staging import Staging, packed_layout, typed_view

logger = logging.getLogger(__name__)

_SECTIONS = (("input_ids", torch.int64), ("positions", torch.int64), ("slot_mapping", torch.int64),
             ("seeds", torch.int64), ("steps", torch.int64), ("seq_lens", torch.int32), ("temperatures", torch.float32))
_PAD = {"input_ids": 0, "positions": 0, "slot_mapping": -1, "seeds": 0, "steps": 0, "seq_lens": 0,
        "temperatures": 0.0}


def decode_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every multiple of 8 up to `max_num_seqs` (included even if not a multiple)."""
    if max_num_seqs < 1:
        raise ValueError(f"max_num_seqs must be >= 1, got {max_num_seqs}")
    buckets = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 8))
    return [*buckets, max_num_seqs]


class GraphRunner(BucketedGraphs):
    """Owns the decode graphs of one model + KV cache, their static buffers and memory pool."""

    too_large = "batch of {n} exceeds the largest decode graph ({largest})"

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_num_seqs: int, max_model_len: int) -> None:
        super().__init__(decode_buckets(max_num_seqs))
        self.model = model
        self.kv_cache = kv_cache
        self.max_model_len = max_model_len
        device = model.device
        n = self.buckets[-1]
        self.block_size = kv_cache.spec.block_size
        self.width = -(-max_model_len // self.block_size)
        sizes = [n * dtype.itemsize for _, dtype in _SECTIONS] + [n * self.width * 4]
        offsets, self._nbytes = packed_layout(sizes)
        self._table_offset = offsets[-1]
        self.staging = Staging(device)
        self._staged = torch.zeros(self._nbytes, dtype=torch.uint8, device=device)
        """Device copy of the packed inputs; the static inputs below are views of it."""
        host = self.staging.host(self._nbytes)
        self._host_views: dict[str, np.ndarray] = {}
        for (name, dtype), off in zip(_SECTIONS, offsets, strict=False):
            setattr(self, name, typed_view(self._staged, off, dtype, (n,)))
            self._host_views[name] = host[off:off + n * dtype.itemsize].view(getattr(np, str(dtype)[6:]))
        self._host_table = host[self._table_offset:].view(np.int32)
        self.slot_mapping.fill_(-1)
        self.block_tables = torch.zeros(n, self.width, dtype=torch.int32, device=device)
        self.cu_seqlens_q = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.logits = torch.zeros(n, model.config.vocab_size, dtype=model.dtype, device=device)
        self.tokens = torch.zeros(n, dtype=torch.int64, device=device)
        self._hidden: dict[tuple[Hashable, int], torch.Tensor] = {}
        self._pool = None

    def _meta(self, bucket: int) -> AttentionMetadata:
        return AttentionMetadata(
            is_decode=True, slot_mapping=self.slot_mapping[:bucket], block_tables=self.block_tables[:bucket],
            seq_lens=self.seq_lens[:bucket], cu_seqlens_q=self.cu_seqlens_q[:bucket + 1],
            max_seqlen_q=1, max_seqlen_k=self.max_model_len,
        )

    def _step(self, bucket: int) -> torch.Tensor:
        """The captured work: forward, LM head into `logits`, sampling into `tokens`. Returns the hidden states."""
        hidden = self.model(self.input_ids[:bucket], self.positions[:bucket], self.kv_cache.layers,
                            self._meta(bucket))
        logits = self.model.lm_logits(hidden, out=self.logits[:bucket])
        self.tokens[:bucket].copy_(sample_tokens(logits, self.temperatures[:bucket], self.seeds[:bucket],
                                                 self.steps[:bucket]))
        return hidden

    def reset_inputs(self) -> None:
        """Fill every static input with padding (token 0, slot -1, length 0, greedy, zero block tables)
        on the current stream."""
        for name, value in _PAD.items():
            getattr(self, name).fill_(value)
        self.block_tables.zero_()

    def warm_up(self, bucket: int) -> None:
        """One padded step of `bucket` on the current stream, from freshly reset inputs: lazy
        initialisation and kernel compilation before a capture."""
        self.reset_inputs()
        self._step(bucket)

    @torch.inference_mode()
    def capture(self, key: Hashable = "default", stream: torch.cuda.Stream | None = None) -> None:
        """Capture one graph per bucket under `key` on `stream` (default: a side stream)."""
        device = self.model.device
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        start = time.perf_counter()
        stream = stream or torch.cuda.Stream(device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        # The static buffers (and the KV cache) were initialised by kernels on the current stream;
        # the capture stream must not read them before those ran. Without this ordering the
        # warm-up read whatever memory the caching allocator handed out (after an earlier engine
        # in the same process freed its tensors: out-of-range token ids -> device-side assert).
        stream.wait_stream(torch.cuda.current_stream(device))
        if not self._graphs:
            with torch.cuda.stream(stream):
                self.model.tune_skinny_linears(max_rows=self.buckets[-1])
        for bucket in reversed(self.buckets):
            with torch.cuda.stream(stream):
                self.warm_up(bucket)
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                hidden = self._step(bucket)
            self._graphs[(key, bucket)] = graph
            self._hidden[(key, bucket)] = hidden
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.capture_seconds += time.perf_counter() - start
        logger.info("captured %d decode graphs (key %r) in %.2f s", len(self.buckets), key,
                    time.perf_counter() - start)

    def _launch(self, bucket: int, key: Hashable) -> tuple[torch.Tensor, bool]:
        graph = self._graphs.get((key, bucket))
        if graph is None:
            return self._step(bucket), False
        graph.replay()
        return self._hidden[(key, bucket)], True

    @torch.inference_mode()
    def decode(self, batch: HostBatch, key: Hashable = "default",
               feed: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """One decode step of a decode-only `batch`: (tokens [n] (greedy / temperature), logits [n, V],
        whether a captured graph ran). Tokens of rows that use top-k / top-p are to be resampled
        from the logits. `feed` = (rows, tokens): device tensors whose ``tokens[i]`` replaces the
        input id of row ``rows[i]`` (sampled by the step before, still on the device)."""
        n = len(batch.sampled)
        bucket = self.bucket_for(n)
        width = batch.block_tables.shape[1]
        if width > self.width:
            raise ValueError(f"a sequence needs {width} KV blocks; the graphs hold {self.width} (max_model_len)")
        self.staging.host(self._nbytes)  # waits until the previous copy left the buffer
        values = {"input_ids": batch.input_ids, "positions": batch.positions, "slot_mapping": batch.slot_mapping,
                  "seeds": batch.sampling.seeds, "steps": batch.sampling.steps, "seq_lens": batch.seq_lens,
                  "temperatures": batch.sampling.temperatures}
        for name, view in self._host_views.items():
            view[:n] = values[name]
            view[n:bucket] = _PAD[name]
        table = self._host_table[:bucket * width].reshape(bucket, width)
        table[:n] = batch.block_tables
        table[n:] = 0
        self.staging.copy_to(self._staged, self._table_offset + bucket * width * 4)
        staged_table = self._staged[self._table_offset:self._table_offset + bucket * width * 4]
        self.block_tables[:bucket, :width].copy_(staged_table.view(torch.int32).view(bucket, width))
        if feed is not None:
            self.input_ids.index_copy_(0, feed[0], feed[1])
        _, replayed = self._launch(bucket, key)
        return self.tokens[:n], self.logits[:n], replayed

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
            key: Hashable = "default") -> torch.Tensor:
        """Hidden states [bucket, hidden] of a decode batch given as device tensors (rows past the
        batch are padding): a graph replay when `key` was captured, else the same padded step eagerly.
        Sampling in the graph runs greedy on these rows."""
        n = input_ids.shape[0]
        bucket = self.bucket_for(n)
        width = meta.block_tables.shape[1]
        for name, src in (("input_ids", input_ids), ("positions", positions), ("slot_mapping", meta.slot_mapping),
                          ("seq_lens", meta.seq_lens)):
            buf = getattr(self, name)
            buf[:n].copy_(src, non_blocking=True)
            buf[n:bucket].fill_(_PAD[name])
        self.temperatures[:bucket].zero_()
        self.block_tables[:n, :width].copy_(meta.block_tables, non_blocking=True)
        self.block_tables[n:bucket].zero_()
        return self._launch(bucket, key)[0]
