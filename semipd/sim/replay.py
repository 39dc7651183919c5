"""Replay a real benchmark run on the simulated GPU and measure how far the simulation is.

A ``semipd bench`` result (``--output-json`` of a run, or of a sweep: one run per rate) holds
every request as the client saw it: when it was sent, its prompt and output lengths, its TTFT,
inter-token gaps and end-to-end latency, and (against our server) the engine's status before
the run. `load_runs` reads those; `replay` sends the same requests, at the same offsets and
with the same lengths, through the simulator under the engine's settings, and compares the
two sides with `semipd.sim.fidelity`.

Both sides are summarised the same way: latency percentiles over the replayed requests, the
throughputs over the span from the first send to the last completion, and SLO attainment
against the result's ``--goodput`` targets. Requests that failed in the measured run are not
replayed (the engine never ran most of them); their count is reported.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semipd.sim.engine_costs import EngineCosts
from semipd.sim.engine_settings import EngineSettings, settings_from_status
from semipd.sim.fidelity import FidelityTable, RunStats, compare, slo_attainment, stats_from_samples
from semipd.sim.results import SimResult
from semipd.sim.runner import SimConfig, run_policy
from semipd.workload import WorkloadRequest


@dataclass(frozen=True)
class MeasuredRequest:
    """One successful request of a measured run. Times in ms, `arrival_s` from the run's start."""

    arrival_s: float
    input_tokens: int
    output_tokens: int
    ttft_ms: float
    tpot_ms: float | None
    e2e_ms: float
    itl_ms: tuple[float, ...] = ()


@dataclass(frozen=True)
class MeasuredRun:
    """One measured run: its successful requests, and what else replay needs."""

    label: str
    requests: tuple[MeasuredRequest, ...]
    num_failed: int = 0
    slos_ms: Mapping[str, float] = field(default_factory=dict)
    """The result's ``--goodput`` targets (ms), by metric (``ttft``, ``tpot``, ``e2el``)."""
    server_status: Mapping[str, Any] | None = None
    """``GET /semipd/status`` before the run, when the server was ours."""

    def workload(self) -> list[WorkloadRequest]:
        """The requests as the simulator takes them: send offsets and measured lengths."""
        return [WorkloadRequest(r.arrival_s, r.input_tokens, r.output_tokens) for r in self.requests]

    def stats(self) -> RunStats:
        reqs = self.requests
        ends = [r.arrival_s + r.e2e_ms / 1e3 for r in reqs]
        span = max(ends) - min(r.arrival_s for r in reqs) if reqs else 0.0
        return stats_from_samples(
            {"ttft": [r.ttft_ms for r in reqs], "tpot": [r.tpot_ms for r in reqs if r.tpot_ms is not None],
             "itl": [g for r in reqs for g in r.itl_ms], "e2e": [r.e2e_ms for r in reqs]},
            request_throughput=len(reqs) / span if span > 0 else None,
            output_throughput=sum(r.output_tokens for r in reqs) / span if span > 0 else None,
            slo_attainment=slo_attainment([r.ttft_ms for r in reqs], [r.tpot_ms for r in reqs],
                                          [r.e2e_ms for r in reqs], self.slos_ms))


def load_runs(path: str | Path) -> list[MeasuredRun]:
    """The runs of a ``semipd bench`` result file: one for ``bench run``, one per rate for a sweep.
    ValueError (naming the file) when it cannot be read or holds no per-request records."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"replay: cannot read {path}: {exc}") from None
    return runs_from_result(doc, str(path))


def runs_from_result(doc: object, name: str) -> list[MeasuredRun]:
    """The runs of a ``semipd bench`` result already read (`name` says where it came from, in errors)."""
    if not isinstance(doc, dict):
        raise ValueError(f"replay: {name} is not a semipd bench result (a JSON object)")
    slos = _slos(doc)
    if "points" in doc:
        runs = [_run(f"rate {p.get('request_rate', '?'):g}" if isinstance(p.get("request_rate"), (int, float))
                     else f"point {i}", p, slos, p.get("server_status", doc.get("server_status")), name)
                for i, p in enumerate(doc["points"] or [])]
    else:
        runs = [_run("run", doc, slos, doc.get("server_status"), name)]
    if not runs:
        raise ValueError(f"replay: {name} holds no runs")
    return runs


def _run(label: str, doc: Mapping[str, Any], slos: dict[str, float], status: Any, path: str) -> MeasuredRun:
    records = doc.get("requests")
    if not isinstance(records, list):
        raise ValueError(f"replay: {path} ({label}) has no per-request records; replay needs a result written by "
                         "`semipd bench --output-json` of this version (it keeps every request)")
    ok, failed = [], 0
    for rec in records:
        try:
            if not rec.get("success", not rec.get("error")) or rec.get("ttft") is None or rec.get("latency") is None:
                failed += 1
                continue
            tpot = rec.get("tpot")
            ok.append(MeasuredRequest(
                arrival_s=float(rec["send_time"]), input_tokens=int(rec["input_tokens"]),
                output_tokens=int(rec["output_tokens"]), ttft_ms=1e3 * float(rec["ttft"]),
                tpot_ms=None if tpot is None else 1e3 * float(tpot), e2e_ms=1e3 * float(rec["latency"]),
                itl_ms=tuple(1e3 * float(g) for g in rec.get("itls") or ())))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"replay: {path} ({label}): malformed request record {rec!r:.200}: {exc}") from None
    if not ok:
        raise ValueError(f"replay: {path} ({label}): no successful request to replay ({failed} failed)")
    return MeasuredRun(label, tuple(ok), failed, slos, status if isinstance(status, dict) else None)


def _slos(doc: Mapping[str, Any]) -> dict[str, float]:
    """The goodput targets: ``goodput_slos_ms`` of a run, or the ``goodput`` flags ("ttft:200") of a sweep."""
    slos = doc.get("goodput_slos_ms")
    if isinstance(slos, dict) and slos:
        return {str(k): float(v) for k, v in slos.items()}
    out = {}
    for item in doc.get("goodput") or []:
        key, _, value = str(item).partition(":")
        try:
            out[key.strip().lower()] = float(value)
        except ValueError:
            continue
    return out


@dataclass(frozen=True)
class ReplayResult:
    """A measured run, its simulation and the error table."""

    run: MeasuredRun
    settings: EngineSettings
    policy: str
    config: SimConfig
    measured: RunStats
    simulated: RunStats
    table: FidelityTable
    wall_time_s: float
    """Seconds the simulation took (the replay's cost)."""
    measured_span_s: float
    """Seconds from the first send to the last reply of the measured run."""
    simulation: SimResult
    """The simulated run itself (its requests are the measured ones, in the same order)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.run.label,
            "num_replayed": len(self.run.requests),
            "num_failed_not_replayed": self.run.num_failed,
            "slos_ms": dict(self.run.slos_ms),
            "engine": self.settings.as_dict(),
            "policy": self.policy,
            "perf_model": self.config.perf_model,
            "costs": self.config.costs.as_dict(),
            "decode_borrows_idle_prefill": self.config.decode_borrows_idle_prefill,
            "fidelity": self.table.to_dict(),
            "replay_wall_time_s": self.wall_time_s,
            "measured_span_s": self.measured_span_s,
        }


def replay(run: MeasuredRun, overrides: EngineSettings, costs: EngineCosts, **sim_fields: Any) -> ReplayResult:
    """Replay `run` under the engine's recorded settings with `overrides` on top; `sim_fields`
    are further `SimConfig` fields (perf model, metrics window, seed)."""
    settings = settings_from_status(run.server_status).merged(overrides)
    policy = settings.policy()
    config = settings.sim_config(costs, **sim_fields)
    start = time.perf_counter()
    result = run_policy(run.workload(), policy, config, collect_itl=True)
    wall = time.perf_counter() - start
    measured, simulated = run.stats(), simulated_stats(result, run.slos_ms)
    reqs = run.requests
    span = max(r.arrival_s + r.e2e_ms / 1e3 for r in reqs) - min(r.arrival_s for r in reqs)
    return ReplayResult(run, settings, policy, config, measured, simulated, compare(measured, simulated), wall, span,
                        result)


def simulated_stats(result: SimResult, slos_ms: Mapping[str, float]) -> RunStats:
    """`RunStats` of a simulation, summarised as `MeasuredRun.stats` summarises a measured run."""
    done = [r for r in result.requests if r.finished and r.ttft_ms is not None and r.completion is not None]
    e2e = [1e3 * (r.completion - r.arrival) for r in done]  # type: ignore[operator]
    span = max(r.completion for r in done) - min(r.arrival for r in result.requests) if done else 0.0  # type: ignore[type-var]
    return stats_from_samples(
        {"ttft": [r.ttft_ms for r in done], "tpot": [r.tpot_ms for r in done if r.tpot_ms is not None],
         "itl": [1e3 * g for g in result.itl_s], "e2e": e2e},
        request_throughput=len(done) / span if span > 0 else None,
        output_throughput=sum(r.output_len for r in done) / span if span > 0 else None,
        slo_attainment=slo_attainment([r.ttft_ms for r in done], [r.tpot_ms for r in done],  # type: ignore[misc]
                                      e2e, slos_ms, num_failed=len(result.requests) - len(done)))

