"""The `semipd simulate` flags for the engine's settings and costs, and ``--replay``.

Engine flags mirror ``semipd serve``'s (``--max-num-batched-tokens``, ``--num-kv-blocks``,
``--max-num-seqs``, the Semi-PD controller's cooldown and bounds, decode borrowing). They apply to
every simulation; with ``--replay RESULT.json`` they override what the result recorded of the
server, and ``--mode``, ``--controller``, ``--predictor`` and ``--initial-prefill`` choose what the
policies otherwise would.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from semipd.outputs import check_output_path
from semipd.sim.engine_costs import COSTS, EngineCosts, get_costs
from semipd.sim.engine_settings import CONTROLLERS, MODES, EngineSettings
from semipd.sim.fidelity import format_table
from semipd.sim.replay import MeasuredRun, ReplayResult, load_runs, replay
from semipd.slo.constraints import SLOConstraints


def replay_costs(runs: list[MeasuredRun]) -> str:
    """Costs a replay assumes by default: ``core`` for a result against a server with the engine-core
    process (its recorded status names the core), else ``http`` (``semipd bench`` loads a server over HTTP)."""
    core = any(run.server_status and "engine_core_pid" in run.server_status for run in runs)
    return "core" if core else "http"


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """The engine, costs and replay groups."""
    eng = parser.add_argument_group("engine (as `semipd serve`; with --replay, these override the recorded server)")
    eng.add_argument("--mode", choices=MODES, help="replay only: unified, or semi-pd (prefill and decode on SM shares)")
    eng.add_argument("--controller", choices=CONTROLLERS, help="replay only: semi-pd controller (off cannot be "
                                                               "simulated)")
    eng.add_argument("--predictor", help="replay only: the slo controller's predictor (paper, heuristic, profile)")
    eng.add_argument("--max-num-batched-tokens", type=_positive_int, help="token budget of one iteration "
                                                                          "(default 8192)")
    eng.add_argument("--max-num-seqs", type=_positive_int, help="most sequences in one step (default 256)")
    eng.add_argument("--num-kv-blocks", type=_positive_int, help="KV blocks (default: sized from GPU memory)")
    eng.add_argument("--cooldown-seconds", type=_non_negative, help="controller cooldown after a move (default 10)")
    eng.add_argument("--min-prefill-percent", type=float, help="smallest prefill share the controller may pick "
                                                               "(default 20)")
    eng.add_argument("--max-prefill-percent", type=float, help="largest prefill share the controller may pick "
                                                               "(default 80)")
    eng.add_argument("--decode-borrow", action=argparse.BooleanOptionalAction, default=None,
                     help="semi-pd decode runs on every SM while prefill is idle, as the engine does "
                          "(default: on with --replay, off otherwise)")
    cost = parser.add_argument_group("engine costs beyond the GPU kernels (semipd.sim.engine_costs)")
    cost.add_argument("--engine-costs", choices=tuple(COSTS),
                      help="ideal: the GPU alone; engine: the engine in-process; http: behind the one-process "
                           "`semipd serve` of old; core: behind `semipd serve` with its engine-core process "
                           "(default: core or http with --replay, as the result's server was, ideal otherwise)")
    cost.add_argument("--host-overhead-ms", type=_non_negative, help="host work per iteration, ms")
    cost.add_argument("--host-per-seq-ms", type=_non_negative, help="host work per sequence of a decode step, ms")
    cost.add_argument("--frontend-offset-ms", type=_non_negative, help="added to TTFT and end-to-end latency, ms")
    rep = parser.add_argument_group("replay a real run")
    rep.add_argument("--replay", type=Path, metavar="RESULT.json",
                     help="a `semipd bench --output-json` result (run or sweep): replay its requests on the simulated "
                          "GPU and report measured vs simulated")
    rep.add_argument("--replay-rate", type=float, action="append", metavar="RATE",
                     help="replay only this rate of a sweep (repeatable; default: every rate)")


def engine_costs(args: argparse.Namespace, default: str) -> EngineCosts:
    """The costs preset (``--engine-costs``, else `default`) with the cost flags on top."""
    return get_costs(args.engine_costs or default).with_overrides(
        host_step_ms=args.host_overhead_ms, host_per_seq_ms=args.host_per_seq_ms, frontend_ms=args.frontend_offset_ms)


def engine_overrides(args: argparse.Namespace) -> EngineSettings:
    """The engine settings the flags give (None where a flag is absent)."""
    return EngineSettings(
        mode=args.mode, controller=args.controller, prefill_percent=args.initial_prefill, predictor=args.predictor,
        monitoring_interval=args.monitoring_interval, cooldown_seconds=args.cooldown_seconds,
        min_prefill_percent=args.min_prefill_percent, max_prefill_percent=args.max_prefill_percent,
        slo_ttft_ms=args.slo_ttft_ms, slo_tpot_ms=args.slo_tpot_ms,
        max_num_batched_tokens=args.max_num_batched_tokens, max_num_seqs=args.max_num_seqs,
        num_kv_blocks=args.num_kv_blocks, decode_borrow=args.decode_borrow)


def sim_engine_fields(args: argparse.Namespace) -> dict[str, Any]:
    """`SimConfig` fields from the engine and cost flags, for a simulation that is not a replay."""
    if args.mode or args.controller or args.predictor or args.replay_rate:
        raise ValueError("--mode, --controller, --predictor and --replay-rate go with --replay; "
                         "without it, choose policies with --policy")
    fields: dict[str, Any] = {"costs": engine_costs(args, "ideal")}
    for flag, name in (("max_num_batched_tokens", "max_prefill_tokens"), ("max_num_seqs", "max_decode_batch"),
                       ("num_kv_blocks", "num_kv_blocks"), ("cooldown_seconds", "cooldown_seconds"),
                       ("min_prefill_percent", "min_prefill_percentage"),
                       ("max_prefill_percent", "max_prefill_percentage"),
                       ("decode_borrow", "decode_borrows_idle_prefill")):
        if getattr(args, flag) is not None:
            fields[name] = getattr(args, flag)
    return fields


def run_replay(args: argparse.Namespace) -> int:
    """``semipd simulate --replay RESULT.json``: replay, print one table per run, write the JSON."""
    out, err = Console(width=None if sys.stdout.isatty() else 140), Console(stderr=True)
    try:
        if args.policies or args.plot is not None or args.trace is not None or args.phased:
            raise ValueError("--replay takes the workload and the engine from the result: drop --policy, --plot, "
                             "--trace and --phased (use --mode/--controller to change the engine)")
        check_output_path(args.output_json, "--output-json")
        runs = load_runs(args.replay)
        if args.replay_rate:
            wanted = {f"rate {r:g}" for r in args.replay_rate}
            runs = [r for r in runs if r.label in wanted]
            if not runs:
                raise ValueError(f"--replay-rate: {args.replay} has no run at {', '.join(sorted(wanted))}")
        costs = engine_costs(args, replay_costs(runs))
        overrides = engine_overrides(args)
        sim = {"perf_model": args.perf_model, "window_size_seconds": args.window, "seed": args.seed,
               "switch_delay_s": args.switch_delay, "slo": SLOConstraints()}
        results = [replay(run, overrides, costs, **sim) for run in runs]
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return 2
    for res in results:
        out.print(format_table(res.table, title=_title(res)))
    within, total = (sum(x) for x in zip(*(r.table.within(10.0) for r in results), strict=True))
    out.print(f"P50/P90 TTFT and TPOT within 10%: {within} of {total} cells; costs: "
              f"{', '.join(f'{k}={v}' for k, v in costs.as_dict().items())}")
    if args.output_json is not None:
        doc = {"result": str(args.replay), "costs": costs.as_dict(), "runs": [r.to_dict() for r in results]}
        args.output_json.write_text(json.dumps(doc, indent=2) + "\n")
        out.print(f"wrote {args.output_json}")
    return 0


def _title(res: ReplayResult) -> str:
    run = res.run
    failed = f", {run.num_failed} failed (not replayed)" if run.num_failed else ""
    share = res.wall_time_s / res.measured_span_s if res.measured_span_s > 0 else math.nan
    return (f"{run.label}: {len(run.requests)} requests replayed{failed}; {res.policy} on {res.config.perf_model}; "
            f"simulated in {res.wall_time_s:.2f} s ({share:.1%} of the run's {res.measured_span_s:.1f} s)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value
