"""What a simulation run returns: per-request records, the controller timeline, a summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from semipd.slo.constraints import SLOConstraints


@dataclass
class RequestRecord:
    """One request's outcome. Times are virtual seconds from the workload's start."""

    rid: str
    arrival: float
    first_token: float | None
    completion: float | None
    input_len: int
    output_len: int
    """Tokens generated (the requested length when finished)."""
    ttft_ms: float | None
    tpot_ms: float | None
    """None for one output token (TPOT is undefined) or an unfinished request."""
    finished: bool
    """False when aborted (e.g. it could never fit in the KV pool)."""
    preemptions: int


@dataclass
class CycleRecord:
    """One controller cycle (recorded for static and unified policies too, for the timeline)."""

    time: float
    prefill_percentage: float
    """Target split after the cycle's decision (100/100 for unified: both phases share the GPU)."""
    decode_percentage: float
    ttft_p90_ms: float
    tpot_p90_ms: float
    ttft_p95_ms: float
    tpot_p95_ms: float
    arrival_rate: float
    num_waiting_prefill: int
    violations: dict[str, float]
    """Violated SLOs ("ttft", "tpot") and their percentile / target ratios in this window."""
    action: str
    """"keep", or the move made, e.g. "72.7/27.3 -> 60.6/39.4"."""
    streaming_tpot_p95_ms: float = 0.0
    """P95 streaming TPOT (tokens streamed in the window, finished requests or not): the controller's
    TPOT signal, which leads ``tpot_p95_ms`` (completed requests only)."""


def _pct(values: np.ndarray, p: float) -> float:
    return float(np.percentile(values, p)) if values.size else 0.0


@dataclass
class SimResult:
    """A run of one policy over one workload."""

    policy: str
    requests: list[RequestRecord]
    timeline: list[CycleRecord]
    num_reallocations: int
    controller_status: dict[str, Any] | None
    sim_duration_s: float
    """Virtual seconds from the first arrival to the last completion."""
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    """Run facts beyond the contract: KV pool size, switch latencies, event counts."""
    itl_s: list[float] = field(default_factory=list)
    """Gaps between consecutive tokens of each request, seconds, pooled (``run_policy(collect_itl=True)``)."""

    def summary(self, slo: SLOConstraints) -> dict[str, Any]:
        """SLO attainment (both targets met, per request; a one-token output is judged on TTFT
        alone; unfinished requests miss), per-SLO attainment, latency percentiles over finished
        requests, throughputs and goodput (requests meeting both SLOs per second)."""
        n = len(self.requests)
        fin = [r for r in self.requests if r.finished]
        ttft = np.array([r.ttft_ms for r in fin], dtype=float)
        tpot = np.array([r.tpot_ms for r in fin if r.tpot_ms is not None], dtype=float)
        ttft_ok = sum(1 for r in fin if r.ttft_ms is not None and r.ttft_ms <= slo.ttft_target_ms)
        multi = [r for r in self.requests if not r.finished or r.output_len > 1]
        tpot_ok = sum(1 for r in multi if r.tpot_ms is not None and r.tpot_ms <= slo.tpot_target_ms)
        both = sum(1 for r in fin if r.ttft_ms is not None and r.ttft_ms <= slo.ttft_target_ms
                   and (r.tpot_ms is None or r.tpot_ms <= slo.tpot_target_ms))
        duration = self.sim_duration_s if self.sim_duration_s > 0 else float("nan")
        return {
            "policy": self.policy,
            "num_requests": n,
            "slo_attainment": both / n if n else 0.0,
            "ttft_attainment": ttft_ok / n if n else 0.0,
            "tpot_attainment": tpot_ok / len(multi) if multi else 1.0,
            "ttft_p50_ms": _pct(ttft, 50), "ttft_p90_ms": _pct(ttft, 90), "ttft_p99_ms": _pct(ttft, 99),
            "tpot_p50_ms": _pct(tpot, 50), "tpot_p90_ms": _pct(tpot, 90), "tpot_p99_ms": _pct(tpot, 99),
            "throughput_rps": len(fin) / duration,
            "output_tokens_per_s": sum(r.output_len for r in fin) / duration,
            "goodput_rps": both / duration,
            "num_reallocations": self.num_reallocations,
            "num_finished": len(fin),
            "num_aborted": n - len(fin),
            "num_preemptions": sum(r.preemptions for r in self.requests),
            "sim_duration_s": self.sim_duration_s,
            "wall_time_s": self.wall_time_s,
        }
