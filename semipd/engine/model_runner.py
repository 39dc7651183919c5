"""`ModelRunner`: turns a scheduler `Batch` into tensors, runs the model, samples.

Token layout of a batch (the flattened "varlen" layout of `semipd.engine.attention.base`)::

    [ chunk 0 tokens | chunk 1 tokens | ... | decode 0 | decode 1 | ... ]

A prefill chunk of `request` covers positions ``start .. start + num_tokens - 1`` of its
prompt + output tokens; a decode covers the one position ``num_tokens - 1`` (the last
sampled token, whose K/V is not cached yet). Rows that get a token sampled are the last
row of each finishing chunk, then every decode row: the order of `Batch.sampled_requests`.

Each request's ``payload`` must carry ``params`` (`SamplingParams`) and ``seed`` (int): the
engine sets them. Tensors are built from host lists with one copy each (pinned memory on
CUDA); decode-only batches go through the `GraphRunner` when one is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from semipd.engine.attention.base import AttentionMetadata
from semipd.engine.kv_cache import KVCache
from semipd.engine.model.llama import LlamaForCausalLM
from semipd.engine.sampler import Sampler, SamplingTensors
from semipd.sched.batch import Batch
from semipd.sched.request import Request

if TYPE_CHECKING:
    from semipd.engine.cuda_graphs import GraphRunner


@dataclass
class PreparedBatch:
    """Device tensors of one batch."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    meta: AttentionMetadata
    sample_rows: torch.Tensor
    """Row of each sampled request in the flattened batch, in `Batch.sampled_requests` order."""
    sampled: list[Request]


def _slots(block_ids: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of positions start..end-1, block by block (no per-token Python work)."""
    out: list[int] = []
    pos = start
    while pos < end:
        block, offset = divmod(pos, block_size)
        stop = min(end, (block + 1) * block_size)
        base = block_ids[block] * block_size
        out.extend(range(base + offset, base + offset + stop - pos))
        pos = stop
    return out


class ModelRunner:
    """Runs one scheduler iteration on the device: build inputs, forward, logits of sampled rows, sample."""

    def __init__(self, model: LlamaForCausalLM, kv_cache: KVCache, graph_runner: GraphRunner | None = None) -> None:
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = kv_cache.spec.block_size
        self.device = model.device
        self.graph_runner = graph_runner
        self.sampler = Sampler()

    def _to_device(self, values: list[int], dtype: np.dtype) -> torch.Tensor:
        """One host-to-device copy (through pinned memory on CUDA); numpy converts lists fastest."""
        t = torch.from_numpy(np.array(values, dtype=dtype))
        if self.device.type == "cuda":
            t = t.pin_memory()
        return t.to(self.device, non_blocking=True)

    def prepare(self, batch: Batch) -> PreparedBatch:
        """Host lists -> device tensors for `batch` (which must not be empty)."""
        if batch.is_empty:
            raise ValueError("cannot run an empty batch")
        bs = self.block_size
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seq_lens: list[int] = []
        cu = [0]
        tables: list[list[int]] = []
        rows: list[int] = []
        for chunk in batch.prefills:
            req, start, end = chunk.request, chunk.start, chunk.end
            ids.extend(req.token_ids(start, end))
            positions.extend(range(start, end))
            slots.extend(_slots(req.block_ids, start, end, bs))
            seq_lens.append(end)
            tables.append(req.block_ids[:-(-end // bs)])
            cu.append(cu[-1] + chunk.num_tokens)
            if chunk.is_last:
                rows.append(cu[-1] - 1)
        for req in batch.decodes:
            pos = req.num_tokens - 1
            ids.append(req.last_token_id)
            positions.append(pos)
            slots.append(req.block_ids[pos // bs] * bs + pos % bs)
            seq_lens.append(pos + 1)
            tables.append(req.block_ids[:pos // bs + 1])
            cu.append(cu[-1] + 1)
            rows.append(cu[-1] - 1)
        width = max(len(t) for t in tables)
        flat_tables: list[int] = []
        padding = [0] * width
        for t in tables:
            flat_tables.extend(t)
            flat_tables.extend(padding[:width - len(t)])
        meta = AttentionMetadata(
            is_decode=not batch.prefills,
            slot_mapping=self._to_device(slots, np.int64),
            block_tables=self._to_device(flat_tables, np.int32).view(len(tables), width),
            seq_lens=self._to_device(seq_lens, np.int32),
            cu_seqlens_q=self._to_device(cu, np.int32),
            max_seqlen_q=max(cu[i + 1] - cu[i] for i in range(len(seq_lens))),
            max_seqlen_k=max(seq_lens),
        )
        return PreparedBatch(self._to_device(ids, np.int64), self._to_device(positions, np.int64), meta,
                             self._to_device(rows, np.int64), batch.sampled_requests())

    def sampling_tensors(self, requests: list[Request]) -> SamplingTensors:
        params = [r.payload.params for r in requests]
        return SamplingTensors.build(
            temperatures=[p.temperature for p in params], top_ks=[p.top_k for p in params],
            top_ps=[p.top_p for p in params], seeds=[r.payload.seed for r in requests],
            steps=[r.num_output_tokens for r in requests], vocab_size=self.model.config.vocab_size,
            device=self.device,
        )

    @torch.inference_mode()
    def forward(self, prepared: PreparedBatch) -> torch.Tensor:
        """Final hidden states of every row: a CUDA-graph replay for decode batches it covers, else eager."""
        meta = prepared.meta
        if self.graph_runner is not None and meta.is_decode and self.graph_runner.can_run(len(prepared.sampled)):
            return self.graph_runner.run(prepared.input_ids, prepared.positions, meta)
        return self.model(prepared.input_ids, prepared.positions, self.kv_cache.layers, meta)

    @torch.inference_mode()
    def run(self, batch: Batch) -> list[int]:
        """Run `batch`; returns one sampled token id per `batch.sampled_requests()` entry, in order."""
        prepared = self.prepare(batch)
        hidden = self.forward(prepared)
        if not prepared.sampled:
            return []
        logits = self.model.compute_logits(hidden[prepared.sample_rows])
        return self.sampler(logits, self.sampling_tensors(prepared.sampled)).tolist()
