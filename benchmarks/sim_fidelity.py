"""Simulator fidelity: replay the committed H100 runs on the simulated GPU, report the error.

    python benchmarks/sim_fidelity.py [--trace ../shared/traces/azure_llm_2023_conv.csv]
                                      [--out benchmarks/results/sim_fidelity.json] [--fit]

Every run of ``semipd_h100.json`` (``mixed``: the engine in-process) and ``serving_h100.json``
(through ``semipd serve``) is simulated with the same requests and engine settings
(`fidelity_runs`), twice: with the engine costs of its harness (``engine`` in-process, ``http``
through the server; `semipd.sim.engine_costs`) and as the GPU alone (``ideal``, the simulator
before those costs). Each gives the measured-vs-simulated table of `semipd.sim.fidelity`.

Targets, on the runs where at least half the requests met the SLO (200 ms TTFT, 30 ms TPOT):
at least 80% of the P50/P90 TTFT and TPOT cells within 10%, every attainment within 5 points.
The replay's cost is each simulation's wall time against its run's duration, and a full
``load_runs`` + ``replay`` of a synthetic 10-minute ``semipd bench`` result (target: <= 5%).

``--fit`` searches the cost parameters each harness's preset uses (host time per sequence, the
prefill's loss per decoding sequence, the front-end offset) on a grid and prints the best five by
P50/P90 TTFT and TPOT cells within 10% over all of that harness's runs, then by median error.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from fidelity_runs import COMMON, HTTP, SLO_MS, CommittedRun, committed_runs

from semipd.sim.engine_costs import EngineCosts, get_costs
from semipd.sim.fidelity import FidelityTable, compare
from semipd.sim.replay import load_runs, replay, simulated_stats
from semipd.sim.runner import run_policy
from semipd.slo.constraints import SLOConstraints
from semipd.workload import WorkloadRequest, gamma_arrivals, load_azure_trace

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT_TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
PRESET = {"in-process": "engine", "http": "http"}
SLO = SLOConstraints(ttft_target_ms=SLO_MS["ttft"], tpot_target_ms=SLO_MS["tpot"])
TARGET_ATTAINMENT, TOLERANCE_PCT, CELL_SHARE, ATTAINMENT_POINTS, COST_SHARE = 0.5, 10.0, 0.8, 5.0, 0.05
CELLS = (("ttft", "p50"), ("ttft", "p90"), ("tpot", "p50"), ("tpot", "p90"))


def simulate(run: CommittedRun, costs: EngineCosts) -> tuple[FidelityTable, float]:
    """The run's error table under `costs`, and the simulation's wall seconds."""
    if run.per_request is not None:
        res = replay(run.per_request, run.settings, costs, slo=SLO)
        return compare(run.measured, res.simulated), res.wall_time_s
    start = time.perf_counter()
    result = run_policy(run.workload, run.settings.policy(), run.settings.sim_config(costs, slo=SLO),
                        collect_itl=run.harness == "http")
    wall = time.perf_counter() - start
    return compare(run.measured, simulated_stats(result, SLO_MS)), wall


def is_target(table: FidelityTable) -> bool:
    return (table.measured_attainment or 0.0) >= TARGET_ATTAINMENT


def score(tables: list[FidelityTable]) -> dict[str, Any]:
    """Cells within tolerance and the worst attainment miss on the target runs; errors on all runs."""
    targets = [t for t in tables if is_target(t)]
    within = [t.within(TOLERANCE_PCT) for t in targets]
    errors = [abs(c.error_pct) for t in tables for c in t.cells
              if (c.metric, c.stat) in CELLS and c.error_pct is not None]
    target_errors = [abs(c.error_pct) for t in targets for c in t.cells
                     if (c.metric, c.stat) in CELLS and c.error_pct is not None]
    metrics = sorted({c.metric for t in tables for c in t.cells})
    return {
        "target_runs": len(targets),
        "target_cells_within_10pct": [sum(w for w, _ in within), sum(n for _, n in within)],
        "target_attainment_worst_points": max((abs(t.attainment_points or 0.0) for t in targets), default=None),
        "target_cells_median_abs_error_pct": float(np.median(target_errors)) if target_errors else None,
        "all_runs": len(tables),
        "all_cells_within_10pct": [sum(e <= TOLERANCE_PCT for e in errors), len(errors)],
        "all_cells_median_abs_error_pct": float(np.median(errors)) if errors else None,
        "mape_pct_by_metric": {m: float(np.mean([v for t in tables if (v := t.mape(m)) is not None]))
                               for m in metrics},
    }


def evaluate(runs: list[CommittedRun], costs_by_harness: dict[str, EngineCosts]) -> list[dict[str, Any]]:
    rows = []
    for run in runs:
        table, wall = simulate(run, costs_by_harness[run.harness])
        rows.append({"source": run.source, "harness": run.harness, "config": run.config, "rate": run.rate,
                     "requests": len(run.workload), "per_request_records": run.per_request is not None,
                     "policy": run.settings.policy(), "table": table, "wall_s": wall, "duration_s": run.duration_s})
    return rows


def replay_cost(trace: Path, seconds: float = 600.0, rate: float = 16.0) -> dict[str, Any]:
    """Time ``load_runs`` + ``replay`` of a synthetic `seconds`-long ``semipd bench`` result."""
    arrivals = gamma_arrivals(rate, 1.0, np.random.default_rng(0), duration=seconds)
    lengths = load_azure_trace(trace, max_requests=len(arrivals), max_input_len=7000, max_output_len=1024)
    workload = [WorkloadRequest(float(t), w.input_len, w.output_len) for t, w in zip(arrivals, lengths, strict=True)]
    costs = get_costs("http")
    settings = COMMON.merged(HTTP["static88"])  # the HTTP static 88/44 server
    sim = run_policy(workload, settings.policy(), settings.sim_config(costs, slo=SLO))
    records = []
    for i, r in enumerate(sim.requests):
        gaps = [r.tpot_ms / 1e3] * (r.output_len - 1) if r.tpot_ms is not None else []
        records.append({"index": i, "scheduled_time": r.arrival, "send_time": r.arrival, "input_tokens": r.input_len,
                        "requested_output_tokens": r.output_len, "output_tokens": r.output_len,
                        "ttft": r.ttft_ms / 1e3, "itls": gaps, "latency": r.completion - r.arrival, "error": "",
                        "success": True, "tpot": None if r.tpot_ms is None else r.tpot_ms / 1e3})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.json"
        path.write_text(json.dumps({"goodput_slos_ms": SLO_MS, "requests": records}))
        start = time.perf_counter()
        (run,) = load_runs(path)
        res = replay(run, settings, costs, slo=SLO)
        wall = time.perf_counter() - start
    return {"requests": len(records), "tokens": int(sum(r.output_len for r in sim.requests)),
            "run_span_s": res.measured_span_s, "load_and_replay_wall_s": wall, "simulation_wall_s": res.wall_time_s,
            "share": wall / res.measured_span_s}


def fit(runs: list[CommittedRun], harness: str) -> None:
    """Grid search of `harness`'s preset parameters over all its runs; prints the best five."""
    base = get_costs(PRESET[harness])
    grid = {"host_per_seq_ms": (0.04, 0.055, 0.07, 0.08, 0.1), "frontend_ms": (0.0, 8.0, 15.0, 20.0)}
    grid["prefill_host_per_seq_ms"] = (0.0, 0.1, 0.2, 0.3) if harness == "http" else (0.0, 0.05)
    mine = [r for r in runs if r.harness == harness]
    trials = []
    for values in itertools.product(*grid.values()):
        costs = base.with_overrides(**dict(zip(grid, values, strict=True)))
        s = score([simulate(r, costs)[0] for r in mine])
        trials.append((s["all_cells_within_10pct"][0], -(s["all_cells_median_abs_error_pct"] or 0.0),
                       dict(zip(grid, values, strict=True)), s))
    trials.sort(key=lambda t: t[:2], reverse=True)
    for within, all_med, params, s in trials[:5]:
        print(f"{harness}: {params}: P50/P90 TTFT+TPOT cells within 10% {within}/{s['all_cells_within_10pct'][1]} "
              f"(target runs {s['target_cells_within_10pct'][0]}/{s['target_cells_within_10pct'][1]}), "
              f"median |error| {-all_med:.1f}%, worst target attainment {s['target_attainment_worst_points']:.1f} pts")


def markdown(rows: list[dict[str, Any]]) -> str:
    """One line per run: attainment and the P50/P90 TTFT and TPOT cells, measured / simulated (error)."""
    lines = ["| harness | config | rate | SLO met, measured / sim | TTFT p50 (ms) | TTFT p90 | TPOT p50 | TPOT p90 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        t: FidelityTable = row["table"]
        cells = {(c.metric, c.stat): c for c in t.cells}
        text = []
        for key in CELLS:
            c = cells[key]
            mark = "" if abs(c.error_pct or 0.0) <= TOLERANCE_PCT else "**"
            text.append(f"{c.measured:.0f} / {c.simulated:.0f} ({mark}{c.error_pct:+.0f}%{mark})" if c.measured >= 100
                        else f"{c.measured:.1f} / {c.simulated:.1f} ({mark}{c.error_pct:+.0f}%{mark})")
        star = "" if is_target(t) else " (below 0.5)"
        lines.append(f"| {row['harness']} | {row['config']} | {row['rate']:g} | {t.measured_attainment:.2f} / "
                     f"{t.simulated_attainment:.2f}{star} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument("--out", type=Path, default=RESULTS / "sim_fidelity.json")
    parser.add_argument("--fit", action="store_true", help="grid-search the presets' parameters instead")
    args = parser.parse_args(argv)
    if not args.trace.exists():
        print(f"trace not found: {args.trace}", file=sys.stderr)
        return 2
    runs = committed_runs(RESULTS, args.trace)
    if args.fit:
        for harness in PRESET:
            fit(runs, harness)
        return 0
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {
        "benchmark": "simulator fidelity: the committed H100 runs replayed on the simulated H100",
        "date": datetime.date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "python": platform.python_version()},
        "per_request_records": any(r.per_request is not None for r in runs),
        "note": "The committed results hold percentiles only; their requests were rebuilt from the recorded "
                "settings and seeds (request counts and token totals match) and compared with those percentiles.",
        "targets": {"runs": f"measured SLO attainment >= {TARGET_ATTAINMENT}",
                    "cells": f">= {CELL_SHARE:.0%} of P50/P90 TTFT and TPOT within {TOLERANCE_PCT:g}%",
                    "attainment": f"within {ATTAINMENT_POINTS:g} points", "replay_cost": f"<= {COST_SHARE:.0%}"},
        "costs": {h: get_costs(p).as_dict() for h, p in PRESET.items()},
    }
    for name, costs in (("calibrated", {h: get_costs(p) for h, p in PRESET.items()}),
                        ("ideal", dict.fromkeys(PRESET, get_costs("ideal")))):
        rows = evaluate(runs, costs)
        report[name] = {"summary": score([r["table"] for r in rows]),
                        "by_harness": {h: score([r["table"] for r in rows if r["harness"] == h]) for h in PRESET},
                        "runs": [{**{k: v for k, v in r.items() if k != "table"}, "fidelity": r["table"].to_dict()}
                                 for r in rows]}
        used = PRESET if name == "calibrated" else dict.fromkeys(PRESET, "ideal")
        presets = ", ".join(f"{h}: {c}" for h, c in used.items())
        print(f"\n## {name} ({presets})")
        print(markdown(rows))
        print(json.dumps(report[name]["summary"], indent=1))
    shares = [r["wall_s"] / r["duration_s"] for r in report["calibrated"]["runs"]]
    report["replay_cost"] = {"committed_runs_max_share": max(shares), "synthetic": replay_cost(args.trace)}
    report["load_average_1m"] = {"before": load_before, "after": os.getloadavg()[0]}
    print(f"\nreplay cost: committed runs at most {max(shares):.2%} of their duration; synthetic 10-minute result: "
          f"{json.dumps(report['replay_cost']['synthetic'])}")
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
