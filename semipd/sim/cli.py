"""`semipd simulate`: replay one workload on the simulated GPU under several policies and
compare them side by side (SLO attainment, latency percentiles, throughput, goodput)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from semipd.outputs import check_output_path
from semipd.perf.registry import get_perf_model, known_perf_models
from semipd.sim.replay_cli import add_engine_arguments, run_replay, sim_engine_fields
from semipd.sim.report import PlotUnavailableError, plot_timelines, policy_table
from semipd.slo.constraints import SLOConstraints
from semipd.traces import PUBLIC_TRACES, resolve_trace
from semipd.workload import (
    LengthDist,
    WorkloadRequest,
    concatenate_phases,
    describe_workload,
    load_azure_trace,
    prefill_heavy_then_decode_heavy,
    synthetic_workload,
)

DEFAULT_POLICIES = ("unified", "static:30/70", "static:50/50", "static:70/30", "slo:paper", "slo:heuristic")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("workload (a trace, the built-in phased workload, or synthetic arrivals)")
    src.add_argument("--trace", metavar="CSV_OR_NAME",
                     help="Azure LLM trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens), or a public trace "
                          f"fetched on first use and cached: {', '.join(PUBLIC_TRACES)}")
    src.add_argument("--time-scale", type=float, default=1.0,
                     help="multiply trace inter-arrival times by this (0.5 replays twice as fast)")
    src.add_argument("--trace-start", type=float, default=0.0, help="skip this many seconds of the trace")
    src.add_argument("--max-requests", type=int, help="use at most this many requests")
    src.add_argument("--max-input-len", type=int, help="cap prompt lengths (tokens)")
    src.add_argument("--max-output-len", type=int, help="cap output lengths (tokens)")
    src.add_argument("--phased", action="store_true",
                     help="built-in workload: a prefill-heavy phase, then a decode-heavy phase")
    src.add_argument("--phase-trace", type=Path, action="append", dest="phase_traces", metavar="CSV",
                     help="a phase from a trace CSV (repeatable: the phases run in the order given, "
                          "--phase-seconds each; --time-scale, --trace-start and the length caps apply to each)")
    src.add_argument("--phase-seconds", type=float, default=60.0,
                     help="length of each --phase-trace phase, seconds of the replayed (scaled) trace")
    src.add_argument("--request-rate", type=float, default=8.0, help="synthetic arrivals per second")
    src.add_argument("--duration", type=float,
                     help="workload length, seconds (default: 60 synthetic, 240 phased)")
    src.add_argument("--burstiness", type=float, default=1.0, help="gamma shape of inter-arrival gaps (1 = Poisson)")
    src.add_argument("--input-len", default="lognormal:1155:1020",
                     help="synthetic prompt lengths: N, LO:HI (uniform) or lognormal:MEAN:MEDIAN")
    src.add_argument("--output-len", default="lognormal:211:129",
                     help="synthetic output lengths: N, LO:HI (uniform) or lognormal:MEAN:MEDIAN")

    slo = parser.add_argument_group("SLO")
    slo.add_argument("--slo-ttft-ms", type=float, help="TTFT target, ms (default 200; a replay: the server's)")
    slo.add_argument("--slo-tpot-ms", type=float, help="TPOT target, ms (default 30; a replay: the server's)")
    slo.add_argument("--slo-percentile", type=float, default=90.0,
                     help="percentile of TTFT and TPOT the controller holds to the targets")

    sim = parser.add_argument_group("simulation")
    sim.add_argument("--policy", action="append", dest="policies", metavar="POLICY",
                     help="unified, static:P/D (e.g. static:70/30), slo:heuristic, slo:paper, slo:profile; "
                          f"repeatable (default: {', '.join(DEFAULT_POLICIES)})")
    sim.add_argument("--perf-model", default="llama-3.1-8b-h100",
                     help=f"GPU + model performance model ({', '.join(known_perf_models())}, "
                          "a model name, or a profile .json)")
    sim.add_argument("--switch-delay", type=float, default=0.0,
                     help="seconds an SM reallocation takes (0: green contexts; seconds: MPS process rotation)")
    sim.add_argument("--monitoring-interval", type=float, help="controller period, seconds (default 5)")
    sim.add_argument("--window", type=float, default=30.0, help="metrics window, seconds")
    sim.add_argument("--initial-prefill", "--initial-prefill-sm-percent", dest="initial_prefill", type=float,
                     help="prefill SM percentage the slo policies start from (default 50)")
    sim.add_argument("--seed", type=int, default=0)

    out = parser.add_argument_group("output")
    out.add_argument("--output-json", type=Path, help="write workload, SLO and per-policy summaries as JSON")
    out.add_argument("--plot", type=Path, metavar="FILE.png", help="plot the policies' timelines (needs matplotlib)")
    add_engine_arguments(parser)


def parse_length(spec: str, field: str) -> LengthDist:
    """`N`, `LO:HI` or `lognormal:MEAN:MEDIAN` -> `LengthDist` (ValueError naming `field`)."""
    parts = spec.strip().lower().split(":")
    try:
        if len(parts) == 1:
            return LengthDist.fixed(int(parts[0]))
        if len(parts) == 2:
            return LengthDist.uniform(int(parts[0]), int(parts[1]))
        if len(parts) == 3 and parts[0] == "lognormal":
            return LengthDist.lognormal(float(parts[1]), float(parts[2]))
    except ValueError as exc:
        raise ValueError(f"{field} {spec!r}: {exc}") from None
    raise ValueError(f"{field} {spec!r}: expected N, LO:HI or lognormal:MEAN:MEDIAN")


def build_workload(args: argparse.Namespace) -> tuple[list[WorkloadRequest], dict[str, Any]]:
    """The workload the flags describe, and a description of where it came from."""
    if args.trace is not None and args.phased:
        raise ValueError("--trace and --phased exclude each other")
    if args.phase_traces and (args.trace is not None or args.phased):
        raise ValueError("--phase-trace excludes --trace and --phased")
    if args.phase_traces:
        phases = [load_azure_trace(resolve_trace(path), time_scale=args.time_scale, max_input_len=args.max_input_len,
                                   max_output_len=args.max_output_len, start_offset_s=args.trace_start)
                  for path in args.phase_traces]
        workload = concatenate_phases(phases, args.phase_seconds)
        source = {"source": "phase-traces", "phases": [str(p) for p in args.phase_traces],
                  "phase_seconds": args.phase_seconds, "time_scale": args.time_scale,
                  "trace_start_s": args.trace_start}
    elif args.trace is not None:
        workload = load_azure_trace(resolve_trace(args.trace), time_scale=args.time_scale,
                                    max_requests=args.max_requests, max_input_len=args.max_input_len,
                                    max_output_len=args.max_output_len, start_offset_s=args.trace_start)
        source = {"source": "trace", "trace": str(args.trace), "time_scale": args.time_scale,
                  "trace_start_s": args.trace_start}
    elif args.phased:
        duration = args.duration if args.duration is not None else 240.0
        workload = prefill_heavy_then_decode_heavy(duration, seed=args.seed)
        source = {"source": "phased", "phases": "prefill-heavy, then decode-heavy", "total_duration_s": duration}
    else:
        input_len = parse_length(args.input_len, "--input-len")
        output_len = parse_length(args.output_len, "--output-len")
        duration = args.duration if args.duration is not None else 60.0
        workload = synthetic_workload(args.request_rate, duration=duration, num_requests=args.max_requests,
                                      input_len=input_len, output_len=output_len, burstiness=args.burstiness,
                                      seed=args.seed)
        source = {"source": "synthetic", "request_rate": args.request_rate, "burstiness": args.burstiness,
                  "input_len": repr(input_len), "output_len": repr(output_len)}
    if args.trace is None and args.max_requests is not None:
        workload = workload[: args.max_requests]
    if not workload:
        raise ValueError("the workload is empty")
    return workload, {**source, **describe_workload(workload)}


def run(args: argparse.Namespace) -> int:
    from semipd.sim.runner import SimConfig, parse_policy, run_policy

    if args.replay is not None:
        return run_replay(args)
    out, err = Console(width=None if sys.stdout.isatty() else 132), Console(stderr=True, soft_wrap=True)
    args.slo_ttft_ms = 200.0 if args.slo_ttft_ms is None else args.slo_ttft_ms
    args.slo_tpot_ms = 30.0 if args.slo_tpot_ms is None else args.slo_tpot_ms
    args.monitoring_interval = 5.0 if args.monitoring_interval is None else args.monitoring_interval
    args.initial_prefill = 50.0 if args.initial_prefill is None else args.initial_prefill
    try:
        check_output_path(args.output_json, "--output-json")
        check_output_path(args.plot, "--plot")
        get_perf_model(args.perf_model)
        specs = list(args.policies or DEFAULT_POLICIES)
        for spec in specs:
            parse_policy(spec)
        slo = SLOConstraints(ttft_target_ms=args.slo_ttft_ms, tpot_target_ms=args.slo_tpot_ms,
                             ttft_percentile=args.slo_percentile, tpot_percentile=args.slo_percentile)
        config = SimConfig(perf_model=args.perf_model, slo=slo, monitoring_interval=args.monitoring_interval,
                           window_size_seconds=args.window, switch_delay_s=args.switch_delay,
                           initial_prefill_percentage=args.initial_prefill, seed=args.seed, **sim_engine_fields(args))
        workload, workload_info = build_workload(args)
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return 2

    out.print(f"workload: {workload_info['num_requests']} requests over {workload_info['duration_s']:.0f} s "
              f"({workload_info['request_rate']:.2f} req/s), mean input {workload_info['mean_input_len']:.0f}, "
              f"mean output {workload_info['mean_output_len']:.0f} tokens; perf model {args.perf_model}")
    results = []
    start = time.perf_counter()
    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        for spec in specs:
            task = progress.add_task(spec, total=1.0)
            result = run_policy(workload, spec, config,
                                on_progress=lambda f, task=task: progress.update(task, completed=f))
            progress.update(task, completed=1.0)
            results.append(result)
    summaries = {spec: r.summary(slo) for spec, r in zip(specs, results, strict=True)}
    out.print(policy_table(summaries, slo, title=f"{len(workload)} requests; SLO met = TTFT <= {args.slo_ttft_ms:g} ms "
                                                 f"and TPOT <= {args.slo_tpot_ms:g} ms"))
    out.print(f"simulated in {time.perf_counter() - start:.1f} s")

    if args.output_json is not None:
        doc = {"workload": workload_info, "slo": slo.as_dict(),
               "config": {"perf_model": args.perf_model, "switch_delay_s": args.switch_delay,
                          "monitoring_interval_s": args.monitoring_interval, "window_s": args.window,
                          "initial_prefill_percentage": args.initial_prefill, "seed": args.seed},
               "policies": summaries}
        try:
            args.output_json.write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            err.print(f"[red]error:[/] --output-json: cannot write {escape(str(args.output_json))}: "
                      f"{escape(exc.strerror or str(exc))}")
            return 1
        out.print(f"wrote {args.output_json}")
    if args.plot is not None:
        try:
            plot_timelines(results, slo, args.plot, title=f"{workload_info['source']} workload",
                           percentile=95 if args.slo_percentile >= 95 else 90)
            out.print(f"wrote {args.plot}")
        except PlotUnavailableError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            return 1
        except OSError as exc:
            err.print(f"[red]error:[/] --plot: cannot write {escape(str(args.plot))}: "
                      f"{escape(exc.strerror or str(exc))}")
            return 1
    return 0

