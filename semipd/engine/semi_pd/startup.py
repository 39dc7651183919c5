"""Start-up pieces of the Semi-PD engine: the SM partitions it can reach and the decode CUDA
graphs captured on each of them.

Partitions. On a GPU with green contexts (and ``controller != "off"``) every reachable
split is a real pair of disjoint SM groups. On a GPU without them, or with the controller
off, both workers get a plain stream over the whole GPU (``shared_streams``). On the CPU
the partitions carry no streams (``none``), over a nominal grid of 100 "SMs" in steps of
10, so the controller and the switch protocol still run. Whenever real partitions were
wanted but cannot be had, the reason is logged and kept in the status.

Graphs. A CUDA graph keeps the SMs of the stream it was captured on, so decode graphs are
captured once per reachable partition on that partition's decode stream (keyed by its
prefill SM count), and the decode worker replays the set of its current partition. With
``decode_borrows_idle_prefill`` one more set is captured on a whole-device stream (key
`WHOLE_DEVICE`), replayed while prefill is idle. Likewise the prefill worker's piecewise graphs
(`PiecewiseGraphs`: mixed and prefill steps up to ``piecewise_max_tokens``) are captured once per
partition on its prefill stream, under the same keys. Capture time and the device memory the graphs
took are measured.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from semipd.allocation import SMAllocation, SMGrid
from semipd.engine.runtime.batch_inputs import padded_token_buckets
from semipd.engine.runtime.cuda_graphs import GraphRunner
from semipd.engine.runtime.model_runner import ModelRunner
from semipd.engine.runtime.piecewise_graphs import PiecewiseGraphs
from semipd.engine.runtime.warm_up import prefill_warm_up_batches, synthetic_request
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.workers import LaunchThrottle, throttled_prefill
from semipd.partition.green import (
    HOPPER_MIN_SMS,
    HOPPER_SPLIT_GRANULARITY,
    GreenContextFactory,
    PartitionFactory,
    PartitionManager,
    SharedStreamFactory,
    green_contexts_unavailable_reason,
)
from semipd.sched import Batch, BlockAllocator, PrefillChunk, Request

logger = logging.getLogger(__name__)

WHOLE_DEVICE = "whole-device"
"""Graph key of the decode graphs captured on the whole-device stream."""

CPU_GRID = SMGrid(total_sms=100, granularity=10, min_sms=10)
"""Nominal grid without a GPU: percentages in steps of 10."""


def _cuda_grid(device: torch.device) -> SMGrid:
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return SMGrid(sms, HOPPER_SPLIT_GRANULARITY, HOPPER_MIN_SMS) if sms >= 2 * HOPPER_MIN_SMS else SMGrid(sms, 1, 1)


def reachable_splits(grid: SMGrid, config: SemiPDConfig) -> list[int]:
    """Prefill SM counts to pre-create: the configured ones, else every split of `grid`
    within the configured prefill range; always including the initial split."""
    initial = grid.prefill_sms(grid.nearest(_initial_allocation(config)))
    if config.controller == "off":
        return [initial]
    if config.reachable_prefill_sms is not None:
        chosen = set(config.reachable_prefill_sms)
        bad = sorted(p for p in chosen if p not in grid.prefill_sm_choices())
        if bad:
            raise ValueError(f"reachable_prefill_sms {bad} are not splits of {grid}; choose from "
                             f"{grid.prefill_sm_choices()}")
    else:
        lo, hi = config.min_prefill_percent, config.max_prefill_percent
        chosen = {p for p in grid.prefill_sm_choices() if lo - 1e-9 <= 100.0 * p / grid.total_sms <= hi + 1e-9}
    return sorted(chosen | {initial})


def _initial_allocation(config: SemiPDConfig) -> SMAllocation:
    p = config.initial_prefill_sm_percent
    return SMAllocation(p, 100.0 - p)


def build_partition_manager(device: torch.device, config: SemiPDConfig) -> PartitionManager:
    """The `PartitionManager` for `device` and `config` (partitions not created yet: call start())."""
    factory: PartitionFactory | None = None
    reason: str | None = None
    if device.type == "cuda":
        index = device.index
        if config.controller != "off":
            reason = green_contexts_unavailable_reason(index)
        if config.controller != "off" and reason is None:
            factory = GreenContextFactory(index)
            grid = factory.grid()
        else:
            grid = _cuda_grid(device)
            factory = SharedStreamFactory(grid.total_sms, index)
    else:
        grid = CPU_GRID
        reason = "no CUDA device: the workers run without SM partitions"
    if config.controller == "off":
        reason = "controller 'off': the workers share every SM"
    elif reason is not None:
        logger.warning("semi-pd: no SM partitions (%s); the two workers run side by side without SM limits", reason)
    reachable = reachable_splits(grid, config)
    initial = grid.nearest(_initial_allocation(config))
    return PartitionManager(grid, initial, factory, reachable, unavailable_reason=reason)


@dataclass(frozen=True)
class GraphCapture:
    """What capturing the decode graphs cost."""

    num_partitions: int
    num_graphs: int
    seconds: float
    memory_bytes: int
    """Device memory that went from free to used during the captures (graph pool and graph objects)."""

    def as_dict(self) -> dict[str, float | int]:
        return {"partitions": self.num_partitions, "graphs": self.num_graphs, "capture_seconds": round(self.seconds, 3),
                "memory_mib": round(self.memory_bytes / 2**20, 1)}


def capture_partition_graphs(graphs: GraphRunner, manager: PartitionManager, max_partitions: int,
                             whole_device_stream: torch.cuda.Stream | None = None) -> GraphCapture:
    """Capture one decode graph set per partition of `manager` (started, with streams) on its
    decode stream, plus one on `whole_device_stream` (key `WHOLE_DEVICE`) when given. More
    partitions than `max_partitions` is a ValueError (bounded cost)."""
    parts = manager.partitions()
    if len(parts) > max_partitions:
        raise ValueError(f"max_graph_partitions is {max_partitions} but {len(parts)} partitions are reachable "
                         f"({sorted(parts)}); narrow reachable_prefill_sms or raise max_graph_partitions")
    sets = [(key, part.decode_stream) for key, part in sorted(parts.items())]  # the key the decode worker uses
    return _capture_sets(graphs, sets, whole_device_stream, "decode")


def capture_prefill_pieces(pieces: PiecewiseGraphs, manager: PartitionManager,
                           whole_device_stream: torch.cuda.Stream | None = None) -> GraphCapture:
    """Capture one piecewise graph set per partition of `manager` (started, with streams) on its
    prefill stream, keyed by its prefill SM count, plus one on `whole_device_stream` (key
    `WHOLE_DEVICE`) when given."""
    sets = [(key, part.prefill_stream) for key, part in sorted(manager.partitions().items())]
    return _capture_sets(pieces, sets, whole_device_stream, "piecewise prefill")


def _capture_sets(graphs: GraphRunner | PiecewiseGraphs, sets: list[tuple[int, torch.cuda.Stream]],
                  whole_device_stream: torch.cuda.Stream | None, what: str) -> GraphCapture:
    """Capture `graphs` under each (key, stream) of `sets`, and under `WHOLE_DEVICE` on
    `whole_device_stream` when given; measures the time and the device memory it took."""
    if whole_device_stream is not None:
        sets = [*sets, (WHOLE_DEVICE, whole_device_stream)]
    device = graphs.model.device
    torch.cuda.synchronize(device)
    free_before, _ = torch.cuda.mem_get_info(device)
    start = time.perf_counter()
    for key, stream in sets:
        graphs.capture(key=key, stream=stream)
    torch.cuda.synchronize(device)
    free_after, _ = torch.cuda.mem_get_info(device)
    capture = GraphCapture(len(sets), len(sets) * graphs.graphs_per_set, time.perf_counter() - start,
                           max(0, free_before - free_after))
    logger.info("semi-pd: captured %d %s graphs over %d partitions in %.1f s (%.0f MiB)", capture.num_graphs, what,
                capture.num_partitions, capture.seconds, capture.memory_bytes / 2**20)
    return capture


def warm_prefill_streams(runner: ModelRunner, throttle: LaunchThrottle, manager: PartitionManager,
                         allocator: BlockAllocator, vocab_size: int, num_tokens: int, max_seqs: int) -> float:
    """Before serving: prefill batches of the usual shapes once (Triton compiles the kernel
    variants they need); then on every partition's prefill stream one full `num_tokens`
    prefill (PyTorch's caching allocator keeps cached blocks per stream, so each stream then
    holds a prefill's working set) and every matmul shape of a padded prefill batch
    (`LlamaForCausalLM.warm_up_matmuls`). The first layers of an iteration, and of a stream after a switch,
    thus neither compile, nor call cudaMalloc, nor meet a new GEMM shape. Memory the allocator
    cannot keep is released by it as usual. Returns seconds."""
    start = time.perf_counter()
    made: list[Request] = []
    try:
        parts = [part for _, part in sorted(manager.partitions().items())]
        with torch.cuda.stream(parts[0].prefill_stream):
            for batch in prefill_warm_up_batches(allocator, vocab_size, num_tokens, made):
                throttled_prefill(runner, throttle, batch, parts[0].prefill_stream)
        full = synthetic_request(allocator, "warm-up-full", num_tokens, vocab_size)
        made.append(full)
        batch = Batch(prefills=[PrefillChunk(full, 0, num_tokens, True)])
        token_counts = padded_token_buckets(num_tokens) if runner.pad_prefill else []
        for part in parts:
            with torch.cuda.stream(part.prefill_stream):
                throttled_prefill(runner, throttle, batch, part.prefill_stream)
                runner.model.warm_up_matmuls(token_counts, range(1, max_seqs + 1))
            if part.prefill_stream is not None:
                part.prefill_stream.synchronize()
    finally:
        for req in made:
            allocator.free(req)
    return time.perf_counter() - start
