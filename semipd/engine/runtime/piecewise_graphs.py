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

Memory: the inputs, ``qkv``, ``attn`` and the final hidden states are static buffers sized for
the largest bucket. Everything else a segment allocates comes from one private graph pool. The
residual stream passes from one segment to the next through pool memory: during capture the
residual tensor stays alive from the segment that writes it until the one that reads it is
captured, so no later segment of the same bucket reuses that memory, and buckets never run
concurrently. The pool is this object's own (never the decode graphs'), because in Semi-PD mode
decode graphs replay while other work runs.

Without CUDA (or before `capture`) the same padded segments run eagerly over the same buffers, so
the buffer logic is tested on every device.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable

import torch

from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata
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


class PiecewiseGraphs:
    """Owns the segment graphs of one model + KV cache, their static buffers and memory pool."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, max_tokens: int) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.buckets = token_buckets(max_tokens)
        cfg, device, n = model.config, model.device, self.buckets[-1]
        self.input_ids = torch.zeros(n, dtype=torch.int64, device=device)
        self.positions = torch.zeros(n, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.int64, device=device)
        self.qkv = torch.zeros(n, cfg.q_size + 2 * cfg.kv_size, dtype=model.dtype, device=device)
        """The QKV projection of the current layer; attention reads q from its first columns."""
        self.q = self.qkv[:, :cfg.q_size].view(n, cfg.num_attention_heads, cfg.head_dim)
        self.attn = torch.zeros(n, cfg.num_attention_heads, cfg.head_dim, dtype=model.dtype, device=device)
        self.hidden = torch.zeros(n, cfg.hidden_size, dtype=model.dtype, device=device)
        self._graphs: dict[tuple[Hashable, int], list[torch.cuda.CUDAGraph]] = {}
        self._pool = None
        self.capture_seconds = 0.0

    @property
    def max_tokens(self) -> int:
        return self.buckets[-1]

    def can_run(self, num_tokens: int) -> bool:
        return num_tokens <= self.buckets[-1]

    def bucket_for(self, num_tokens: int) -> int:
        for b in self.buckets:
            if b >= num_tokens:
                return b
        raise ValueError(f"a step of {num_tokens} tokens exceeds the largest piecewise graph ({self.buckets[-1]})")

    def is_captured(self, key: Hashable = "default") -> bool:
        return (key, self.buckets[-1]) in self._graphs

    def _segment(self, i: int, bucket: int, residual: torch.Tensor | None) -> torch.Tensor | None:
        """Segment `i` of a `bucket`-token step over the static buffers; returns the residual stream."""
        m = self.model.model
        out, residual = m.segment(i, self.input_ids[:bucket], self.positions[:bucket], self.model.cos_sin_cache,
                                  self.kv_cache.layers, self.slot_mapping[:bucket], self.attn[:bucket], residual,
                                  qkv_out=self.qkv[:bucket])
        target = self.hidden if i == m.num_segments - 1 else self.q
        if out.data_ptr() != target.data_ptr():  # the final norm, and q after a q-norm (Qwen3), are new tensors
            target[:bucket].copy_(out)
        return residual

    def _eager(self, bucket: int, attend) -> None:
        residual = None
        for i in range(self.model.model.num_segments):
            residual = self._segment(i, bucket, residual)
            if attend is not None and i < self.model.model.num_segments - 1:
                attend(i)

    @torch.inference_mode()
    def capture(self, key: Hashable = "default", stream: torch.cuda.Stream | None = None) -> None:
        """Capture every segment of every bucket under `key` on `stream` (default: a side stream);
        the graphs keep that stream's SMs."""
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
                self._eager(bucket, None)  # compiles kernels and initialises cuBLAS for these shapes
            stream.synchronize()
            graphs, residual = [], None
            for i in range(self.model.model.num_segments):
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool, stream=stream):
                    residual = self._segment(i, bucket, residual)
                graphs.append(graph)
            self._graphs[(key, bucket)] = graphs
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        self.capture_seconds += time.perf_counter() - start
        logger.info("captured %d piecewise graphs (%d buckets x %d segments, key %r) in %.2f s",
                    len(self.buckets) * self.model.model.num_segments, len(self.buckets),
                    self.model.model.num_segments, key, time.perf_counter() - start)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                key: Hashable = "default") -> tuple[torch.Tensor, bool]:
        """(final hidden states [T, hidden], whether captured graphs ran) of a batch of ``T`` tokens
        given as device tensors. The result is a view of a static buffer: read it before the next step."""
        t = input_ids.shape[0]
        bucket = self.bucket_for(t)
        for buf, src, pad in ((self.input_ids, input_ids, 0), (self.positions, positions, 0),
                              (self.slot_mapping, meta.slot_mapping, -1)):
            buf[:t].copy_(src)
            buf[t:bucket].fill_(pad)
        layers = self.model.model.layers
        kv = self.kv_cache.layers

        def attend(i: int) -> None:
            layers[i].self_attn.attend(self.q[:t], kv[i], meta, out=self.attn[:t])

        graphs = self._graphs.get((key, bucket))
        if graphs is None:
            self._eager(bucket, attend)
            return self.hidden[:t], False
        for i, graph in enumerate(graphs):
            graph.replay()
            if i < len(graphs) - 1:
                attend(i)
        return self.hidden[:t], True
