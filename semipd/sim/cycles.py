"""`CycleRecorder`: what happens every ``monitoring_interval`` of virtual time.

Each cycle stores the engine's state in the collector (``record_system_metrics``), runs
the SLO controller's `step(now)` when the policy has one (and tells the executor, so a
requested switch gets its due event), then records a `CycleRecord` for the timeline.
Static and unified policies get the same records with action "keep", their violations
judged against the SLOs the same way (percentile / target above the threshold).
"""

from __future__ import annotations

from collections.abc import Callable

from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.sched import BlockAllocator
from semipd.sim.executor import SimExecutor
from semipd.sim.resource_manager import SimulatedResourceManager
from semipd.sim.results import CycleRecord
from semipd.slo import SLOAwareResourceController, SLOConstraints


class CycleRecorder:
    """The executor's ``on_tick``: controller step plus timeline record."""

    def __init__(self, executor: SimExecutor, collector: SemiPDMetricsCollector, allocator: BlockAllocator,
                 slo: SLOConstraints, rm: SimulatedResourceManager | None,
                 controller: SLOAwareResourceController | None,
                 on_cycle: Callable[[CycleRecord], None] | None = None,
                 after_step: Callable[[], None] | None = None) -> None:
        """`after_step` runs after each controller step (the executor schedules a requested switch)."""
        self.executor = executor
        self.collector = collector
        self.allocator = allocator
        self.slo = slo
        self.rm = rm
        self.controller = controller
        self.on_cycle = on_cycle
        self.after_step = after_step
        self.timeline: list[CycleRecord] = []

    def __call__(self, now: float) -> None:
        rm = self.rm
        running, waiting = self.executor.system_state()
        self.collector.record_system_metrics(running, waiting, self.allocator.usage,
                                             rm.target if rm is not None else None, timestamp=now)
        action, violations = "keep", None
        if self.controller is not None:
            decision = self.controller.step(now)
            action, violations = decision.label, dict(decision.violations)
            if self.after_step is not None:
                self.after_step()
        window = self.collector.get_current_window_metrics()
        if violations is None:
            violations = self._violations(window)
        prefill, decode = (100.0, 100.0) if rm is None else (rm.target.prefill_percentage,
                                                             rm.target.decode_percentage)
        record = CycleRecord(
            time=now, prefill_percentage=prefill, decode_percentage=decode,
            ttft_p90_ms=window.ttft_p90, tpot_p90_ms=window.tpot_p90,
            ttft_p95_ms=window.ttft_p95, tpot_p95_ms=window.tpot_p95,
            arrival_rate=window.request_arrival_rate, num_waiting_prefill=window.num_waiting_prefill,
            violations=violations, action=action, streaming_tpot_p95_ms=window.streaming_tpot_percentile(95))
        self.timeline.append(record)
        if self.on_cycle is not None:
            self.on_cycle(record)

    def _violations(self, window: AggregatedMetrics) -> dict[str, float]:
        slo = self.slo
        out = {}
        if window.num_ttft_samples:
            ratio = window.ttft_percentile(slo.ttft_percentile) / slo.ttft_target_ms
            if ratio > slo.ttft_violation_threshold:
                out["ttft"] = ratio
        if window.num_tpot_samples:
            ratio = window.tpot_percentile(slo.tpot_percentile) / slo.tpot_target_ms
            if ratio > slo.tpot_violation_threshold:
                out["tpot"] = ratio
        return out
