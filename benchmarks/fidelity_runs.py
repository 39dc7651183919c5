"""The committed H100 runs that `sim_fidelity.py` replays: their requests, engine settings and figures.

Two sources, both in ``benchmarks/results``:

- ``semipd_h100.json`` ``mixed``: the engine driven in-process by ``bench_semipd.py`` (Azure
  conversation lengths drawn at random from the trace, prompts <= 7000, outputs <= 1024; Poisson
  arrivals, 20 s per rate, seed = the rate; unified with an 8192-token budget, semi-pd with 4096,
  256 sequences, 16384 KV blocks; SLO controller every 2 s with a 4 s cooldown);
- ``serving_h100.json``: ``semipd serve`` + ``semipd bench sweep`` (the first trace requests, same
  caps, Poisson arrivals from seed 0, 30 s per rate), with ``bench_serving.py``'s server flags.

A point with per-request records (a result written by this version of ``semipd bench``) is replayed
from them. The committed files hold only percentiles, so their requests are rebuilt from the
recorded settings and seeds the way the benchmarks drew them, and checked against the recorded
request counts (and, for the HTTP runs, token totals): a mismatch stops the script.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semipd.bench.runner import arrival_rng
from semipd.sim.engine_settings import EngineSettings
from semipd.sim.fidelity import RunStats
from semipd.sim.replay import MeasuredRun, runs_from_result
from semipd.workload import WorkloadRequest, gamma_arrivals, load_azure_trace, poisson_arrivals

MAX_INPUT, MAX_OUTPUT = 7000, 1024
SLO_MS = {"ttft": 200.0, "tpot": 30.0}
KV_BLOCKS = 16384
SEMIPD_BOUNDS = {"min_prefill_percent": 100 * 32 / 132, "max_prefill_percent": 100 * 104 / 132}
"""The engine's default reachable splits (20-80% of 132 SMs on the 8-SM grid: 32..104 prefill SMs)."""
IN_PROCESS = {
    "unified": EngineSettings(mode="unified", max_num_batched_tokens=8192),
    "static:88": EngineSettings(mode="semi-pd", controller="static", prefill_percent=100 * 88 / 132),
    "static:104": EngineSettings(mode="semi-pd", controller="static", prefill_percent=100 * 104 / 132),
    "slo:88": EngineSettings(mode="semi-pd", controller="slo", prefill_percent=100 * 88 / 132, predictor="paper",
                             monitoring_interval=2.0, cooldown_seconds=4.0, **SEMIPD_BOUNDS),
}
HTTP = {
    "unified": EngineSettings(mode="unified", max_num_batched_tokens=8192),
    "static88": EngineSettings(mode="semi-pd", controller="static", prefill_percent=66.67),
}
COMMON = EngineSettings(max_num_seqs=256, num_kv_blocks=KV_BLOCKS, block_size=16, sm_granularity=8, min_sms=16,
                         decode_borrow=True, slo_ttft_ms=SLO_MS["ttft"], slo_tpot_ms=SLO_MS["tpot"])


@dataclass(frozen=True)
class CommittedRun:
    """One configuration at one rate: what was sent, how the engine was set up, what was measured."""

    source: str
    harness: str
    """``in-process`` or ``http``."""
    config: str
    rate: float
    workload: list[WorkloadRequest]
    settings: EngineSettings
    measured: RunStats
    duration_s: float
    """Wall seconds of the measured run (the replay's cost is judged against it)."""
    per_request: MeasuredRun | None = None
    """The measured requests, when the result kept them."""


def committed_runs(results: Path, trace: Path) -> list[CommittedRun]:
    """Every run of the two sources (see the module docstring)."""
    return _in_process(json.loads((results / "semipd_h100.json").read_text()), trace) + \
        _http(json.loads((results / "serving_h100.json").read_text()), trace)


def _in_process(doc: dict[str, Any], trace_path: Path) -> list[CommittedRun]:
    args = doc["mixed_args"]
    trace = load_azure_trace(trace_path, max_input_len=MAX_INPUT, max_output_len=MAX_OUTPUT)
    runs = []
    for config, settings in IN_PROCESS.items():
        for key, m in doc["mixed"][config].items():
            if key == "startup_seconds":
                continue
            rate = float(m["rate"])
            rng = np.random.default_rng(int(rate))  # bench_semipd.make_requests
            times = poisson_arrivals(rate, rng, duration=float(args["duration"]))
            picks = rng.integers(0, len(trace), len(times))
            workload = [WorkloadRequest(float(t), trace[i].input_len, trace[i].output_len)
                        for t, i in zip(times, picks, strict=True)]
            _check(config, rate, len(workload), m["requests"])
            ttft, tpot = m["ttft_ms_p50_p90_p99"], m["tpot_ms_p50_p90_p99"]
            measured = RunStats({"ttft": dict(zip((50.0, 90.0, 99.0), ttft, strict=True)),
                                 "tpot": dict(zip((50.0, 90.0, 99.0), tpot, strict=True))},
                                request_throughput=m["requests_per_s"], output_throughput=m["output_tokens_per_s"],
                                slo_attainment=m["slo_attainment"]["200_30"])
            tokens = 8192 if settings.mode == "unified" else int(args["semipd_prefill_tokens"])
            runs.append(CommittedRun("semipd_h100.json mixed", "in-process", config, rate, workload,
                                     COMMON.merged(settings).merged(EngineSettings(max_num_batched_tokens=tokens)),
                                     measured, float(m["seconds"])))
    return runs


def _http(doc: dict[str, Any], trace_path: Path) -> list[CommittedRun]:
    runs = []
    for config, settings in HTTP.items():
        sweep = doc[config]
        per_request = runs_from_result(sweep, f"serving_h100.json {config}") if any(
            "requests" in p for p in sweep["points"]) else None
        for i, p in enumerate(sweep["points"]):
            rate = float(p["request_rate"])
            if per_request is not None:
                run = per_request[i]
                workload = run.workload()
            else:
                run = None
                arrivals = gamma_arrivals(rate, float(sweep["burstiness"]), arrival_rng(int(sweep["seed"])),
                                          duration=float(sweep["duration_per_rate"]))
                lengths = load_azure_trace(trace_path, max_requests=len(arrivals),
                                           max_input_len=sweep["trace_max_input_len"],
                                           max_output_len=sweep["trace_max_output_len"])
                workload = [WorkloadRequest(float(t), w.input_len, w.output_len)
                            for t, w in zip(arrivals, lengths, strict=True)]
                _check(config, rate, len(workload), p["num_prompts"])
                _check(config, rate, sum(w.input_len for w in workload), p["total_input_tokens"], "prompt tokens")
                _check(config, rate, sum(w.output_len for w in workload), p["total_output_tokens"], "output tokens")
            latency = {m: {q: p[f"p{q:g}_{name}_ms"] for q in (50.0, 90.0, 99.0)}
                       for m, name in (("ttft", "ttft"), ("tpot", "tpot"), ("itl", "itl"), ("e2e", "e2el"))}
            measured = RunStats(latency, request_throughput=p["request_throughput"],
                                output_throughput=p["output_throughput"], slo_attainment=p["slo_attainment"])
            tokens = 8192 if settings.mode == "unified" else 4096
            runs.append(CommittedRun("serving_h100.json", "http", config, rate, workload,
                                     COMMON.merged(settings).merged(EngineSettings(max_num_batched_tokens=tokens)),
                                     measured, float(p["duration"]), run))
    return runs


def _check(config: str, rate: float, rebuilt: int, recorded: int, what: str = "requests") -> None:
    if rebuilt != recorded:
        raise ValueError(f"{config} at {rate:g} req/s: rebuilt {rebuilt} {what}, the result recorded {recorded}; "
                         "the trace or the benchmark's draws differ from the run's")
