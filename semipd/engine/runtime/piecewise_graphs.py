"""`PiecewiseGraphs`: mixed and prefill steps replayed from CUDA graphs, piece by piece around attention.

A decode step is one graph (`GraphRunner`), but a step with prefill chunks cannot be: attention's
work depends on each sequence's query and context lengths, which a graph would freeze. Everything
else in the forward pass depends only on the number of tokens. So the forward pass is cut at
attention (`Model.segment`) and each segment is captured once per token-count bucket::

    static inputs ─► [segment 0] ─► attention 0 ─► [segment 1] ─► ... ─► attention L-1 ─► [segment L] ─► hidden
                     graph          eager, reads      graph                                  graph
                                    q from `qkv`,
                                    writes `attn`

A step of ``T`` tokens runs in the bucket ``B >= T``: the inputs are copied into static buffers and
padded (token 0, position 0, slot -1: padding writes no K/V); attention runs eagerly on the ``T``
real rows between the graph replays, reading q from the static projection buffer ``qkv`` and
writing the static ``attn`` buffer the next graph reads. A Llama step of 32 layers is then 33
replays and 32 attention calls instead of ~500 kernel launches.

Memory: the inputs, ``qkv``, ``attn``, the residual stream and the final hidden states are static
buffers sized for the largest bucket; whatever else a segment allocates comes from one private
graph pool, dead once the segment ends (so buckets and segments share it). The pool is this
object's own, never the decode graphs': in Semi-PD mode decode graphs replay while prefill runs.

Graph sets are keyed like the decode graphs: a graph keeps the SMs of the stream it was captured
on, so the Semi-PD prefill worker captures one set per partition (keyed by its prefill SM count)
and, when a re-partition moves it to another stream between two layers (``layer_hook``), replays
the new partition's set from the next segment on. Every segment reads and writes only the static
buffers, so a segment of a set that was not captured runs eagerly in its place.
Without CUDA (or before `capture`) the same padded segments run eagerly over the same buffers, so
the buffer logic is tested on every device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable

import torch

from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata
from semipd.engine.runtime.graph_buckets import BucketedGraphs
from semipd.engine.runtime.kv_cache import KVCache

logger = logging.getLogger(__name__)


def token_buckets(max_tokens: int) -> list[int]:
    """Token-count buckets up to `max_tokens` (included): every 16 up to 256, every 32 up to 512,
    every 64 up to 1024, then every 128: padding costs at most 15 tokens up to 256, and 12.5%
    of a step above."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    buckets: list[int] = []
    size, step = 16, 16
    while size < max_tokens:
        buckets.append(size)
        step = 16 if size < 256 else 32 if size < 512 else 64 if size < 1024 else 128
        size += step
    return [*buckets, max_tokens]


class PiecewiseGraphs(BucketedGraphs):
    """Owns the segment graphs of one model + KV cache, their static buffers and memory pool."""

    too_large = "a step of {n} tokens exceeds the largest piecewise graph ({largest})"

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_tokens: int) -> None:
        super().__init__(token_buckets(max_tokens))
        self.graphs_per_bucket = model.model.num_segments
        self.model = model
        self.kv_cache = kv_cache
        cfg, device, n = model.config, model.device, self.buckets[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.qkv = torch.zeros(n, cfg.q_size + 2 * cfg.kv_size, dtype=model.dtype, device=device)
        """The QKV projection of the current layer; attention reads q from its first columns."""
        self.q = self.qkv[:, :cfg.q_size].view(n, cfg.num_attention_heads, cfg.head_dim)
        self.attn = torch.zeros(n, cfg.num_attention_heads, cfg.head_dim, dtype=model.dtype, device=device)
        self.residual = torch.zeros(n, cfg.hidden_size, dtype=model.dtype, device=device)
        self.hidden = torch.zeros(n, cfg.hidden_size, dtype=model.dtype, device=device)
        self._pool = None

    def _segment(self, i: int, bucket: int) -> None:
        """Segment `i` of a `bucket`-token step, from and into the static buffers."""
        m = self.model.model
        residual = self.residual[:bucket] if i else None
        out, residual = m.segment(i, self.input_ids[:bucket], self.positions[:bucket], self.model.cos_sin_cache,
                                  self.kv_cache.layers, self.slot_mapping[:bucket], self.attn[:bucket], residual,
                                  qkv_out=self.qkv[:bucket])
        if residual is not None:
            self.residual[:bucket].copy_(residual)
        target = self.hidden if i == m.num_segments - 1 else self.q
        if out.data_ptr() != target.data_ptr():  # the final norm, and q after a q-norm (Qwen3), are new tensors
            target[:bucket].copy_(out)

    @torch.inference_mode()
    def capture(self, key: Hashable = "default", stream: torch.cuda.Stream | None = None) -> None:
        """Capture every segment of every bucket under `key` on `stream` (default: a side stream);
        the graphs keep that stream's SMs. The captures write no K/V."""
        device = self.model.device
        if device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        start = time.perf_counter()
        stream = stream or torch.cuda.Stream(device)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        stream.wait_stream(torch.cuda.current_stream(device))  # the static buffers were filled there
        for bucket in reversed(self.buckets):  # largest first: the smaller ones reuse its pool memory
            with torch.cuda.stream(stream):
                self.slot_mapping.fill_(-1)  # warm-up and capture write no K/V
                for i in range(self.model.model.num_segments):  # compiles kernels, meets the GEMM shapes
                    self._segment(i, bucket)
            stream.synchronize()
            graphs = []
            for i in range(self.model.model.num_segments):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                    self._segment(i, bucket)
                graphs.append(graph)
            self._graphs[(key, bucket)] = graphs
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.capture_seconds += time.perf_counter() - start
        logger.info("captured %d piecewise graphs (%d buckets x %d segments, key %r) in %.2f s",
                    self.graphs_per_set, len(self.buckets), self.graphs_per_bucket, key, time.perf_counter() - start)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                key: Hashable = "default",
                layer_hook: Callable[[int], Hashable | None] | None = None) -> tuple[torch.Tensor, bool]:
        """(final hidden states [T, hidden], whether every segment replayed a graph) of a batch of
        ``T`` tokens given as device tensors, on the current stream, with the graph set `key`.
        ``layer_hook(i)`` runs on the host before segment i >= 1 and may return the key to replay
        from there on (after it moved to another partition's stream); None keeps the key. The
        result is a view of a static buffer: read it before the next step."""
        t = input_ids.shape[0]
        bucket = self.bucket_for(t)
        for buf, src, pad in ((self.input_ids, input_ids, 0), (self.positions, positions, 0),
                              (self.slot_mapping, meta.slot_mapping, -1)):
            buf[:t].copy_(src)
            buf[t:bucket].fill_(pad)
        layers = self.model.model.layers
        kv = self.kv_cache.layers
        last = self.model.model.num_segments - 1
        graphed = True
        for i in range(last + 1):
            if i and layer_hook is not None:
                key = layer_hook(i) or key
            graphs = self._graphs.get((key, bucket))
            if graphs is None:
                graphed = False
                self._segment(i, bucket)
            else:
                graphs[i].replay()
            if i < last:
                layers[i].self_attn.attend(self.q[:t], kv[i], meta, out=self.attn[:t])
        return self.hidden[:t], graphed
