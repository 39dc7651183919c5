"""`ModelRunner`: turns a scheduler `Batch` into tensors, runs the model, samples.

`launch` queues a batch on the current stream and returns `PendingTokens`; `wait()` reads the
sampled ids back (one small copy into a reused pinned buffer, then an event wait), so a
caller can tell the launching apart from the waiting. `run` does both.

The host side (`semipd.engine.runtime.batch_inputs`) builds numpy arrays with one short Python loop
over the batch's requests and a persistent block table; `Staging` moves them, sampling
parameters included, to the device in one copy. Decode-only batches go through the
`GraphRunner` when one is given (one graph replay covers forward, LM head and sampling);
other batches run eagerly and take the LM head on their sampled rows only.

Each request's ``payload`` must carry ``params`` (`SamplingParams`) and ``seed`` (int): the
engine sets them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata
from semipd.engine.runtime.batch_inputs import HostBatch, RequestRows, build_host_batch
from semipd.engine.runtime.kv_cache import KVCache
from semipd.engine.runtime.sampler import Sampler, SamplingTensors
from semipd.engine.runtime.staging import Staging
from semipd.sched.batch import Batch
from semipd.sched.request import Request

if TYPE_CHECKING:
    from semipd.engine.runtime.cuda_graphs import GraphRunner


@dataclass
class PreparedBatch:
    """Device tensors of one batch."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor
    """Row of each sampled request in the flattened batch, in `Batch.sampled_requests` order."""
    sampled: list[Request]
    sampling: SamplingTensors
    """Sampling parameters of the sampled rows."""


class PendingTokens:
    """The sampled token ids of a launched batch, readable once the device is done with it."""

    def __init__(self, host: torch.Tensor, n: int, event: torch.cuda.Event | None) -> None:
        self._host = host
        self._n = n
        self._event = event

    def wait(self) -> list[int]:
        """Block (without the GIL) until the tokens arrived; they must be read before the next launch."""
        if self._event is not None:
            self._event.synchronize()
        return self._host[:self._n].tolist()


class ModelRunner:
    """Runs one scheduler iteration on the device: build inputs, forward, logits of sampled rows, sample."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, graph_runner: GraphRunner | None = None,
                 pad_prefill: bool = False) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.spec.block_size
        self.device = model.device
        self.graph_runner = graph_runner
        self.sampler = Sampler()
        self.rows = RequestRows(model.config.vocab_size)
        self.staging = Staging(self.device)
        self.pad_prefill = pad_prefill
        """Pad prefill-only batches to a token-count bucket (`batch_inputs.padded_token_count`)."""
        self.last_run_graphed = False
        """Whether the last `launch` replayed a captured CUDA graph."""
        cuda = self.device.type == "cuda"
        self._out_host = torch.empty(256, dtype=torch.int64, pin_memory=cuda)
        """Sampled token ids come back here (pinned, reused: one batch is waited on before the next launches)."""
        self._out_event = torch.cuda.Event() if cuda else None

    def host_batch(self, batch: Batch) -> HostBatch:
        """Host arrays of `batch` (which must not be empty)."""
        return build_host_batch(batch, self.rows, self.block_size, self.pad_prefill)

    def prepare(self, batch: Batch, host: HostBatch | None = None) -> PreparedBatch:
        """Device tensors for `batch` (which must not be empty), made by one host-to-device copy."""
        hb = host if host is not None else self.host_batch(batch)
        s = hb.sampling
        (ids, positions, slots, seq_lens, cu, tables, rows, temps, top_ks, top_ps, seeds, steps) = \
            self.staging.to_device([hb.input_ids, hb.positions, hb.slot_mapping, hb.seq_lens, hb.cu_seqlens_q,
                                    hb.block_tables, hb.sample_rows, s.temperatures, s.top_ks, s.top_ps, s.seeds,
                                    s.steps])
        meta = AttentionMetadata(is_decode=hb.is_decode, slot_mapping=slots, block_tables=tables, seq_lens=seq_lens,
                                 cu_seqlens_q=cu, max_seqlen_q=hb.max_seqlen_q, max_seqlen_k=hb.max_seqlen_k,
                                 num_decodes=0 if hb.is_decode else len(batch.decodes))
        sampling = SamplingTensors(temperatures=temps, top_ks=top_ks, top_ps=top_ps, seeds=seeds, steps=steps,
                                   all_greedy=s.all_greedy, use_top_k_top_p=s.use_top_k_top_p)
        return PreparedBatch(ids, positions, meta, rows, hb.sampled, sampling)

    @torch.inference_mode()
    def forward(self, prepared: PreparedBatch) -> torch.Tensor:
        """Final hidden states of every row: through the `GraphRunner` for decode batches it covers, else eager."""
        meta = prepared.meta
        if self.graph_runner is not None and meta.is_decode and self.graph_runner.can_run(len(prepared.sampled)):
            return self.graph_runner.run(prepared.input_ids, prepared.positions, meta)
        return self.model(prepared.input_ids, prepared.positions, self.kv_cache.layers, meta)

    @torch.inference_mode()
    def launch(self, batch: Batch, graph_key: Hashable = "default",
               layer_hook: Callable[[int], None] | None = None, host: HostBatch | None = None) -> PendingTokens:
        """Launch `batch` on the current stream without waiting for it; `PendingTokens.wait()`
        gives one sampled token id per `batch.sampled_requests()` entry, in order. Decode-only
        batches replay the graph set `graph_key` of the `GraphRunner` when it covers them; eager
        forwards call ``layer_hook(i)`` before each decoder layer after the first (it may
        change the current stream: the rest of the batch then launches there)."""
        gr = self.graph_runner
        if gr is not None and not batch.prefills and gr.can_run(len(batch.decodes)):
            hb = host if host is not None else self.host_batch(batch)
            tokens, logits, self.last_run_graphed = gr.decode(hb, graph_key)
            if hb.sampling.use_top_k_top_p:
                tokens = self.sampler(logits, self._sampling_tensors(hb))
            return self._read_back(tokens)
        self.last_run_graphed = False
        prepared = self.prepare(batch, host)
        hidden = self.model(prepared.input_ids, prepared.positions, self.kv_cache.layers, prepared.meta,
                            layer_hook=layer_hook)
        if not prepared.sampled:
            return PendingTokens(torch.empty(0, dtype=torch.int64), 0, None)
        logits = self.model.lm_logits(hidden[prepared.sample_rows])
        return self._read_back(self.sampler(logits, prepared.sampling))

    def run(self, batch: Batch, graph_key: Hashable = "default") -> list[int]:
        """`launch` and wait: the sampled token ids of `batch`."""
        return self.launch(batch, graph_key).wait()

    def _read_back(self, tokens: torch.Tensor) -> PendingTokens:
        """Start copying the device `tokens` into the reused pinned buffer (CUDA); on CPU they are there."""
        n = tokens.shape[0]
        if self.device.type != "cuda":
            return PendingTokens(tokens, n, None)
        if self._out_host.shape[0] < n:
            self._out_host = torch.empty(max(n, 2 * self._out_host.shape[0]), dtype=torch.int64, pin_memory=True)
        self._out_host[:n].copy_(tokens, non_blocking=True)
        self._out_event.record()
        return PendingTokens(self._out_host, n, self._out_event)

    def _sampling_tensors(self, hb: HostBatch) -> SamplingTensors:
        s = hb.sampling
        temps, top_ks, top_ps, seeds, steps = self.staging.to_device([s.temperatures, s.top_ks, s.top_ps, s.seeds,
                                                                      s.steps])
        return SamplingTensors(temperatures=temps, top_ks=top_ks, top_ps=top_ps, seeds=seeds, steps=steps,
                               all_greedy=s.all_greedy, use_top_k_top_p=s.use_top_k_top_p)
