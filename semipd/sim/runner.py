"""Run one policy over one workload on the simulated GPU: `SimConfig` and `run_policy`.

The same `semipd.sched` schedulers, `SemiPDMetricsCollector` and `SLOAwareResourceController`
as the real engine, on a `VirtualClock`; only the executor differs (a `PerfModel` times
the iterations). Runs are deterministic: the same workload, policy and config give the
same result (``iteration_time_noise`` draws from a generator seeded with ``seed``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from semipd.allocation import HOPPER_MIN_SMS, HOPPER_SPLIT_GRANULARITY, SMAllocation, SMGrid
from semipd.clock import VirtualClock
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.perf.model import PerfModel
from semipd.perf.registry import get_perf_model
from semipd.sched import (
    BlockAllocator,
    DecodeScheduler,
    DecodeSchedulerConfig,
    PrefillScheduler,
    PrefillSchedulerConfig,
    UnifiedScheduler,
    UnifiedSchedulerConfig,
)
from semipd.sim.cycles import CycleRecorder
from semipd.sim.engine_costs import EngineCosts
from semipd.sim.executor import SimExecutor
from semipd.sim.policy import Policy, parse_policy
from semipd.sim.resource_manager import SimulatedResourceManager
from semipd.sim.results import CycleRecord, RequestRecord, SimResult
from semipd.sim.semipd_executor import SemiPDExecutor
from semipd.sim.unified_executor import UnifiedExecutor
from semipd.slo import CandidateBounds, SLOAwareResourceController, SLOConstraints
from semipd.workload import WorkloadRequest

ITL_SAMPLES = 1_000_000
"""Token gaps the simulator's collector keeps: a 30 s window of 30,000 tokens/s (24 MB)."""

__all__ = ["CycleRecord", "RequestRecord", "SimConfig", "SimResult", "parse_policy", "run_policy"]


@dataclass(frozen=True)
class SimConfig:
    """A simulated GPU, its schedulers and its controller."""

    perf_model: str = "llama-3.1-8b-h100"
    """`get_perf_model` name (or a measured profile .json) timing every iteration."""
    block_size: int = 16
    """Tokens per KV block."""
    num_kv_blocks: int | None = None
    """KV pool size in blocks; None: ``perf_model.kv_capacity_tokens(gpu_memory_utilization) // block_size``."""
    max_prefill_tokens: int = 8192
    """Prefill token budget per iteration (also unified's ``max_num_batched_tokens``)."""
    max_decode_batch: int = 256
    """The engine's ``max_num_seqs``: largest decode batch, most sequences in one prefill iteration,
    and unified's most running requests."""
    slo: SLOConstraints = field(default_factory=SLOConstraints)
    """Targets the controller steers toward and the summary judges by."""
    monitoring_interval: float = 5.0
    """Seconds between controller cycles (and timeline records)."""
    window_size_seconds: float = 30.0
    """Sliding window of the metrics collector, seconds."""
    switch_delay_s: float = 0.0
    """Seconds from a reallocation request until it may take effect (0: green contexts; seconds: MPS rotation)."""
    sm_granularity: int = HOPPER_SPLIT_GRANULARITY
    """SMs per step of the split (Hopper green contexts: 8)."""
    min_sms: int = HOPPER_MIN_SMS
    """Fewest SMs either phase may get (the engine's partitions on an H100: 16)."""
    initial_prefill_percentage: float = 50.0
    """Starting prefill share for ``slo:*`` policies, snapped to the grid (static policies carry their own)."""
    seed: int = 0
    """Seeds the iteration-time noise (the only randomness of a run)."""
    gpu_memory_utilization: float = 0.9
    """Share of GPU memory for weights, activations and KV cache (sizes the pool when ``num_kv_blocks`` is None)."""
    kv_watermark: float = 0.01
    """Share of KV blocks prefill admission leaves free for running decodes to grow into."""
    cooldown_seconds: float = 10.0
    """Controller cooldown after a reallocation (it also waits for a fresh window)."""
    iteration_time_noise: float = 0.0
    """Relative standard deviation of iteration times (lognormal, mean 1); 0: exact perf-model times."""
    costs: EngineCosts = field(default_factory=EngineCosts)
    """What the engine costs beyond the GPU kernels (host time, front end, its SM scaling); the
    default is the GPU alone (`semipd.sim.engine_costs`)."""
    decode_borrows_idle_prefill: bool = True
    """Semi-PD decode steps run on the whole GPU while prefill has nothing to do, as the engine's do
    (`SemiPDConfig.decode_borrows_idle_prefill`)."""
    min_prefill_percentage: float | None = None
    """Smallest prefill share the SLO controller may choose; None: the smallest split of the grid."""
    max_prefill_percentage: float | None = None
    """Largest prefill share the SLO controller may choose; None: the largest split of the grid."""

    def __post_init__(self) -> None:
        for name in ("block_size", "max_prefill_tokens", "max_decode_batch", "sm_granularity", "min_sms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.num_kv_blocks is not None and (isinstance(self.num_kv_blocks, bool)
                                               or not isinstance(self.num_kv_blocks, int) or self.num_kv_blocks < 1):
            raise ValueError(f"num_kv_blocks must be None or an int >= 1, got {self.num_kv_blocks!r}")
        if not isinstance(self.slo, SLOConstraints):
            raise ValueError(f"slo must be an SLOConstraints, got {type(self.slo).__name__}")
        for name in ("monitoring_interval", "window_size_seconds"):
            if not _finite(getattr(self, name)) or getattr(self, name) <= 0:
                raise ValueError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("switch_delay_s", "cooldown_seconds", "iteration_time_noise"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        if not _finite(self.initial_prefill_percentage) or not 0 < self.initial_prefill_percentage < 100:
            raise ValueError(f"initial_prefill_percentage must be in (0, 100), got {self.initial_prefill_percentage!r}")
        if not _finite(self.gpu_memory_utilization) or not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization!r}")
        if not _finite(self.kv_watermark) or not 0 <= self.kv_watermark < 1:
            raise ValueError(f"kv_watermark must be in [0, 1), got {self.kv_watermark!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.costs, EngineCosts):
            raise ValueError(f"costs must be an EngineCosts, got {type(self.costs).__name__}")
        if not isinstance(self.decode_borrows_idle_prefill, bool):
            raise ValueError(f"decode_borrows_idle_prefill must be a bool, got {self.decode_borrows_idle_prefill!r}")
        for name in ("min_prefill_percentage", "max_prefill_percentage"):
            value = getattr(self, name)
            if value is not None and (not _finite(value) or not 0 < value < 100):
                raise ValueError(f"{name} must be None or in (0, 100), got {value!r}")
        lo, hi = self.min_prefill_percentage, self.max_prefill_percentage
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(f"min_prefill_percentage must be <= max_prefill_percentage, got {lo} > {hi}")

    def grid(self, perf: PerfModel) -> SMGrid:
        return SMGrid(perf.total_sms, self.sm_granularity, self.min_sms)

    def num_blocks(self, perf: PerfModel) -> int:
        if self.num_kv_blocks is not None:
            return self.num_kv_blocks
        return max(1, perf.kv_capacity_tokens(self.gpu_memory_utilization) // self.block_size)


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def run_policy(workload: Sequence[WorkloadRequest], policy: str | Policy, config: SimConfig,
               on_progress: Callable[[float], None] | None = None,
               on_cycle: Callable[[CycleRecord], None] | None = None,
               perf: PerfModel | None = None, collect_itl: bool = False) -> SimResult:
    """Simulate `workload` under `policy`. `on_progress(fraction done)` and `on_cycle(record)`
    are called at every controller cycle. `perf` overrides ``config.perf_model`` (tests).
    `collect_itl` keeps every gap between tokens in ``SimResult.itl_s``."""
    pol = policy if isinstance(policy, Policy) else parse_policy(policy)
    costs = config.costs
    perf = costs.perf_model(perf or get_perf_model(config.perf_model))
    host_s, host_per_seq_s = costs.host_step_s(perf), costs.host_per_seq_ms / 1e3
    grid = config.grid(perf)
    num_blocks = config.num_blocks(perf)
    allocator = BlockAllocator(num_blocks, config.block_size, int(config.kv_watermark * num_blocks))
    clock = VirtualClock(0.0)
    history = max(1000, min(len(workload), 200_000))
    collector = SemiPDMetricsCollector(config.window_size_seconds, max_history_size=history, clock=clock,
                                       max_in_flight=max(100_000, len(workload)), max_itl_samples=ITL_SAMPLES)
    wall0 = time.perf_counter()
    executor: SimExecutor
    rm = controller = None
    if pol.kind == "unified":
        sched = UnifiedScheduler(UnifiedSchedulerConfig(config.max_prefill_tokens, config.max_decode_batch), allocator)
        executor = UnifiedExecutor(workload, clock, collector, config.monitoring_interval, perf, sched,
                                   on_progress=on_progress, host_s=host_s, host_per_seq_s=host_per_seq_s)
    else:
        wanted = pol.allocation if pol.allocation is not None else SMAllocation(
            config.initial_prefill_percentage, 100.0 - config.initial_prefill_percentage)
        rm = SimulatedResourceManager(grid, grid.nearest(wanted), clock, config.switch_delay_s)
        rm.start()
        prefill = PrefillScheduler(PrefillSchedulerConfig(config.max_prefill_tokens, config.max_decode_batch),
                                   allocator)
        decode = DecodeScheduler(DecodeSchedulerConfig(config.max_decode_batch), allocator, prefill.add_preempted)
        if pol.kind == "slo":
            controller = SLOAwareResourceController(
                config.slo, collector, rm, config.monitoring_interval, predictor=pol.predictor,
                cooldown_seconds=config.cooldown_seconds, clock=clock, candidate_bounds=_bounds(config),
                predictor_options=_predictor_options(pol.predictor, perf, config),
                prefer_prefill=config.decode_borrows_idle_prefill)
        executor = SemiPDExecutor(workload, clock, collector, config.monitoring_interval, perf, prefill, decode, rm,
                                  on_progress=on_progress, host_s=host_s, host_per_seq_s=host_per_seq_s,
                                  prefill_host_per_seq_s=costs.prefill_host_per_seq_ms / 1e3,
                                  decode_borrow=config.decode_borrows_idle_prefill)
    executor.set_time_noise(config.iteration_time_noise, config.seed)
    executor.frontend_s = costs.frontend_ms / 1e3
    if collect_itl:
        executor.collect_itl()
    after_step = executor.note_reallocation if isinstance(executor, SemiPDExecutor) else None
    recorder = CycleRecorder(executor, collector, allocator, config.slo, rm, controller, on_cycle, after_step)
    executor.on_tick = recorder
    executor.run()
    if rm is not None:
        rm.stop()
    wall = time.perf_counter() - wall0
    records = executor.records()
    ends = [r.completion for r in records if r.completion is not None]
    start = min((r.arrival for r in records), default=0.0)
    extra = {
        "num_kv_blocks": num_blocks,
        "kv_capacity_tokens": num_blocks * config.block_size,
        "kv_blocks_in_use_at_end": allocator.num_used,
        "num_events": executor.num_events,
        "perf_model": perf.name,
        **executor.stats(),
    }
    if rm is not None:
        extra["initial_prefill_sms"] = grid.prefill_sms(rm.history[0][1])
        extra["final_prefill_sms"] = grid.prefill_sms(rm.target)
        extra["switch_latencies_s"] = list(rm.switch_latencies)
    return SimResult(
        policy=str(pol),
        requests=records,
        timeline=recorder.timeline,
        num_reallocations=rm.num_reallocations if rm is not None else 0,
        controller_status=controller.get_controller_status() if controller is not None else None,
        sim_duration_s=(max(ends) - start) if ends else 0.0,
        wall_time_s=wall,
        extra=extra,
        itl_s=executor.itl_samples(),
    )


def _bounds(config: SimConfig) -> CandidateBounds | None:
    """The controller's bounds from the configured prefill range (None: every split of the grid)."""
    if config.min_prefill_percentage is None and config.max_prefill_percentage is None:
        return None
    lo = config.min_prefill_percentage if config.min_prefill_percentage is not None else 0.0
    hi = config.max_prefill_percentage if config.max_prefill_percentage is not None else 100.0
    return CandidateBounds(min_prefill_percentage=lo, max_prefill_percentage=hi,
                           min_decode_percentage=100.0 - hi, max_decode_percentage=100.0 - lo)


def _predictor_options(predictor: str | None, perf: PerfModel, config: SimConfig) -> dict | None:
    """``slo:profile`` in the simulator predicts from the simulator's own performance model."""
    if predictor != "profile":
        return None
    return {"profile": perf, "max_prefill_tokens": config.max_prefill_tokens,
            "max_decode_batch": config.max_decode_batch,
            "decode_borrows_idle_prefill": config.decode_borrows_idle_prefill}
