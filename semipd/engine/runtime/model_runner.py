"""`ModelRunner`: turns a scheduler `Batch` into tensors, runs the model, samples.

`launch` queues a batch on the current stream and returns `PendingTokens`; `wait()` reads the
sampled ids back (one small copy into one of two pinned buffers, then an event wait), so a
caller can tell the launching apart from the waiting. `run` does both. With overlapped
scheduling the next batch is launched before the last one's tokens are read: its decodes
whose last token is still ``PENDING_TOKEN`` take it from the previous `PendingTokens` on the
device (``launch(..., previous=...)``), and the two read-back buffers alternate, so a
`PendingTokens` stays readable until the launch after next.

The host side (`semipd.engine.runtime.batch_inputs`) builds numpy arrays with one short Python loop
over the batch's requests and a persistent block table; `Staging` moves them, sampling
parameters included, to the device in one copy. Decode-only batches go through the
`GraphRunner` when one is given (one graph replay covers forward, LM head and sampling);
other batches run through the `PiecewiseGraphs` when given and the step fits its largest bucket
(graphed segments, eager attention), else eagerly; they take the LM head on their sampled rows only.

Each request's ``payload`` must carry ``params`` (`SamplingParams`) and ``seed`` (int): the
engine sets them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from semipd.engine.models.llama import LlamaForCausalLM
from semipd.engine.runtime.attention.base import AttentionMetadata
from semipd.engine.runtime.batch_inputs import HostBatch, RequestRows, build_host_batch
from semipd.engine.runtime.kv_cache import KVCache
from semipd.engine.runtime.sampler import Sampler, SamplingTensors
from semipd.engine.runtime.staging import Staging
from semipd.sched.batch import Batch
from semipd.sched.request import PENDING_TOKEN, Request

if TYPE_CHECKING:
    from semipd.engine.runtime.cuda_graphs import GraphRunner
    from semipd.engine.runtime.piecewise_graphs import PiecewiseGraphs


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
    """The sampled token ids of a launched batch (``sampled``, in order), readable once the device is
    done with it; ``device`` holds them on the device for the next batch's inputs."""

    def __init__(self, host: torch.Tensor, device: torch.Tensor, sampled: list[Request],
                 event: torch.cuda.Event | None) -> None:
        self._host = host
        self.device = device
        self.sampled = sampled
        self._event = event

    def wait(self) -> list[int]:
        """Block (without the GIL) until the tokens arrived; read them before the launch after next."""
        if self._event is not None:
            self._event.synchronize()
        return self._host[:len(self.sampled)].tolist()


class ModelRunner:
    """Runs one scheduler iteration on the device: build inputs, forward, logits of sampled rows, sample."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, graph_runner: GraphRunner | None = None,
                 pad_prefill: bool = False, piecewise: PiecewiseGraphs | None = None) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.spec.block_size
        self.device = model.device
        self.graph_runner = graph_runner
        self.piecewise = piecewise
        self.sampler = Sampler()
        self.rows = RequestRows(model.config.vocab_size)
        self.staging = Staging(self.device)
        self.pad_prefill = pad_prefill
        """Pad prefill-only batches to a token-count bucket (`batch_inputs.padded_token_count`)."""
        self.last_run_graphed = False
        """Whether the last `launch` replayed captured CUDA graphs (whole-step or piecewise)."""
        cuda = self.device.type == "cuda"
        self._out_host = [torch.empty(256, dtype=torch.int64, pin_memory=cuda) for _ in range(2)]
        """Sampled token ids come back here, alternately (pinned, reused)."""
        self._out_events = [torch.cuda.Event() for _ in range(2)] if cuda else [None, None]
        self._out_next = 0
        self._feed_staging = Staging(self.device)

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
        """Final hidden states of every row: through the `GraphRunner` for decode batches it covers, the
        `PiecewiseGraphs` for other batches they cover, else eager."""
        meta = prepared.meta
        if self.graph_runner is not None and meta.is_decode and self.graph_runner.can_run(len(prepared.sampled)):
            return self.graph_runner.run(prepared.input_ids, prepared.positions, meta)
        return self._forward(prepared, "default", None)[0]

    def _forward(self, prepared: PreparedBatch, graph_key: Hashable,
                 layer_hook: Callable[[int], Hashable | None] | None) -> tuple[torch.Tensor, bool]:
        """(hidden states, graphed) of a batch that is not a whole-step decode graph's."""
        pw = self.piecewise
        if pw is not None and pw.can_run(prepared.input_ids.shape[0]):
            return pw.forward(prepared.input_ids, prepared.positions, prepared.meta, graph_key, layer_hook)
        return self.model(prepared.input_ids, prepared.positions, self.kv_cache.layers, prepared.meta,
                          layer_hook=layer_hook), False

    @torch.inference_mode()
    def launch(self, batch: Batch, graph_key: Hashable = "default",
               layer_hook: Callable[[int], Hashable | None] | None = None, host: HostBatch | None = None,
               previous: PendingTokens | None = None) -> PendingTokens:
        """Launch `batch` on the current stream without waiting for it; `PendingTokens.wait()`
        gives one sampled token id per `batch.sampled_requests()` entry, in order. Decodes whose
        last token is pending take it from `previous` (the batch launched before, same stream).
        Decode-only batches replay the graph set `graph_key` of the `GraphRunner` when it covers
        them, other batches the set `graph_key` of the `PiecewiseGraphs` when it covers them (else
        they run eagerly). ``layer_hook(i)`` runs before each segment after the first; it may change
        the current stream (the rest of the batch then launches there) and return the graph key of
        that stream (`PiecewiseGraphs.forward`)."""
        gr = self.graph_runner
        hb = host if host is not None else self.host_batch(batch)
        feed = self._feed(batch, previous)
        if gr is not None and not batch.prefills and gr.can_run(len(batch.decodes)):
            tokens, logits, self.last_run_graphed = gr.decode(hb, graph_key, feed)
            if hb.sampling.use_top_k_top_p:
                tokens = self.sampler(logits, self._sampling_tensors(hb))
            return self._read_back(tokens, hb.sampled)
        prepared = self.prepare(batch, hb)
        if feed is not None:
            prepared.input_ids.index_copy_(0, feed[0], feed[1])
        hidden, self.last_run_graphed = self._forward(prepared, graph_key, layer_hook)
        if not prepared.sampled:
            return PendingTokens(torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.int64), [], None)
        logits = self.model.lm_logits(hidden[prepared.sample_rows])
        return self._read_back(self.sampler(logits, prepared.sampling), prepared.sampled)

    def _feed(self, batch: Batch, previous: PendingTokens | None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(input rows, their tokens on the device) for the decodes of `batch` whose last token is
        pending: sampled by `previous` and not read back yet. None when there are none."""
        rows, sources = [], []
        first = sum(c.num_tokens for c in batch.prefills)
        index = None
        for i, r in enumerate(batch.decodes):
            ids = r.output_token_ids
            if not ids or ids[-1] != PENDING_TOKEN:
                continue
            if index is None:
                if previous is None:
                    raise RuntimeError(f"request {r.rid} has a pending token but no previous batch was given")
                index = {id(s): j for j, s in enumerate(previous.sampled)}
            rows.append(first + i)
            sources.append(index[id(r)])
        if not rows:
            return None
        dst, src = self._feed_staging.to_device([np.array(rows, dtype=np.int64), np.array(sources, dtype=np.int64)])
        return dst, previous.device.index_select(0, src)

    def run(self, batch: Batch, graph_key: Hashable = "default") -> list[int]:
        """`launch` and wait: the sampled token ids of `batch`."""
        return self.launch(batch, graph_key).wait()

    def _read_back(self, tokens: torch.Tensor, sampled: list[Request]) -> PendingTokens:
        """Start copying the device `tokens` into the next pinned buffer (CUDA); on CPU, copy them."""
        n = tokens.shape[0]
        if self.device.type != "cuda":  # a copy: `tokens` may be a graph buffer the next step overwrites
            return PendingTokens(tokens.clone(), tokens, sampled, None)
        i = self._out_next
        self._out_next = 1 - i
        if self._out_host[i].shape[0] < n:
            self._out_host[i] = torch.empty(max(n, 2 * self._out_host[i].shape[0]), dtype=torch.int64,
                                            pin_memory=True)
        self._out_host[i][:n].copy_(tokens, non_blocking=True)
        self._out_events[i].record()
        return PendingTokens(self._out_host[i], tokens, sampled, self._out_events[i])

    def _sampling_tensors(self, hb: HostBatch) -> SamplingTensors:
        s = hb.sampling
        temps, top_ks, top_ps, seeds, steps = self.staging.to_device([s.temperatures, s.top_ks, s.top_ps, s.seeds,
                                                                      s.steps])
        return SamplingTensors(temperatures=temps, top_ks=top_ks, top_ps=top_ps, seeds=seeds, steps=steps,
                               all_greedy=s.all_greedy, use_top_k_top_p=s.use_top_k_top_p)
