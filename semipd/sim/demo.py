"""`semipd demo`: the SLO-aware controller at work on a simulated GPU.

The seed's demo, told as a story: the GPU starts with a split that suits the load badly
(by default 70% of the SMs for prefill, 30% for decode, under a decode-heavy load). As the
decode batch grows, TPOT climbs toward its target - first in the tokens being streamed
("TPOT live"), then in the completed requests - and the controller moves SMs to decode before
(or as) it misses; the run is compared with keeping the starting split. The GPU is partitioned as
in the seed (MPS process rotation): decode does not borrow prefill's idle SMs, which the engine's
green contexts allow and which would let even 30% of the SMs carry this load. Runs in seconds on a
laptop; needs only the base install (the plot needs matplotlib, `pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from semipd.allocation import SMAllocation
from semipd.outputs import check_output_path
from semipd.perf.model import PerfModel
from semipd.perf.registry import get_perf_model
from semipd.sim.report import PLOT_HINT, PlotUnavailableError, attainment_between, plot_timelines
from semipd.slo.constraints import SLOConstraints
from semipd.workload import LengthDist, WorkloadRequest, synthetic_workload

if TYPE_CHECKING:
    from semipd.sim.results import CycleRecord, SimResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-path", default="meta-llama/Llama-3.1-8B-Instruct",
                        help="model to simulate (selects the performance model)")
    parser.add_argument("--ttft-target", type=float, default=200.0, help="TTFT target, ms (P95)")
    parser.add_argument("--tpot-target", type=float, default=25.0, help="TPOT target, ms (P95)")
    parser.add_argument("--initial-prefill-sm", type=float, default=70.0, help="starting prefill SM percentage")
    parser.add_argument("--initial-decode-sm", type=float, default=30.0, help="starting decode SM percentage")
    parser.add_argument("--simulation-cycles", type=int, default=40, help="controller cycles to simulate")
    parser.add_argument("--monitoring-interval", type=float, default=5.0, help="seconds between controller cycles")
    parser.add_argument("--predictor", default="heuristic",
                        help="SLO predictor: heuristic (the seed's), paper (Eq. 1-4 fitted online), profile")
    parser.add_argument("--request-rate", type=float, default=18.0, help="arrivals per second")
    parser.add_argument("--plot", default="semipd_demo.png", metavar="PATH", help="timeline plot ('' to skip)")
    parser.add_argument("--seed", type=int, default=0)


def demo_workload(duration: float, rate: float, seed: int) -> list[WorkloadRequest]:
    """Decode-heavy chat traffic: moderate prompts, long answers."""
    return synthetic_workload(rate, duration=duration, input_len=LengthDist.lognormal(600, 450, lo=32, hi=4096),
                              output_len=LengthDist.lognormal(450, 380, lo=16, hi=2048), seed=seed)


def run(args: argparse.Namespace) -> int:
    from semipd.sim.runner import SimConfig, parse_policy, run_policy

    out, err = Console(width=None if sys.stdout.isatty() else 100), Console(stderr=True, soft_wrap=True)
    try:
        check_output_path(args.plot, "--plot")
        perf = get_perf_model(args.model_path)
        if args.simulation_cycles < 1:
            raise ValueError(f"--simulation-cycles must be >= 1, got {args.simulation_cycles}")
        if abs(args.initial_prefill_sm + args.initial_decode_sm - 100.0) > 1e-6:
            raise ValueError("--initial-prefill-sm and --initial-decode-sm must add up to 100 "
                             f"(got {args.initial_prefill_sm:g} + {args.initial_decode_sm:g})")
        slo = SLOConstraints(ttft_target_ms=args.ttft_target, tpot_target_ms=args.tpot_target)
        config = SimConfig(perf_model=args.model_path, slo=slo,
                           monitoring_interval=args.monitoring_interval,
                           initial_prefill_percentage=args.initial_prefill_sm, seed=args.seed,
                           decode_borrows_idle_prefill=False)
        duration = args.simulation_cycles * args.monitoring_interval
        workload = demo_workload(duration, args.request_rate, args.seed)
        adaptive = str(parse_policy(f"slo:{args.predictor}"))
        static = str(parse_policy(f"static:{args.initial_prefill_sm:g}/{args.initial_decode_sm:g}"))
        grid = config.grid(perf)
        start = grid.nearest(SMAllocation(args.initial_prefill_sm, args.initial_decode_sm))
    except ValueError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        return 2

    out.print(f"[bold]Semi-PD SLO-aware demo[/] on a simulated GPU ({perf.name}, {perf.total_sms} SMs)")
    out.print(f"SLO: P95 TTFT <= {slo.ttft_target_ms:g} ms, P95 TPOT <= {slo.tpot_target_ms:g} ms; "
              f"start at {args.initial_prefill_sm:g}/{args.initial_decode_sm:g} (prefill/decode % of the SMs)")
    prefill_sms = grid.prefill_sms(start)
    out.print(f"the split snaps to the {grid.granularity}-SM grid of the {_gpu_name(perf)}: "
              f"{start.prefill_percentage:.0f}/{start.decode_percentage:.0f} = {prefill_sms}/"
              f"{grid.total_sms - prefill_sms} SMs", highlight=False)
    out.print(f"workload: {len(workload)} decode-heavy requests over {duration:g} s "
              f"(~{args.request_rate:g} req/s); controller every {args.monitoring_interval:g} s\n")

    with Progress(TextColumn("{task.description:<16}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                  console=err) as progress:
        task = progress.add_task(adaptive, total=1.0)
        cycles: list[CycleRecord] = []
        out.print(_cycle_header())

        def on_cycle(record: CycleRecord) -> None:
            cycles.append(record)
            if len(cycles) <= args.simulation_cycles:
                out.print(_cycle_row(len(cycles), record), highlight=False)

        result = run_policy(workload, adaptive, config, on_progress=lambda f: progress.update(task, completed=f),
                            on_cycle=on_cycle)
        progress.update(task, completed=1.0)
        base_task = progress.add_task(static, total=1.0)
        baseline = run_policy(workload, static, config, on_progress=lambda f: progress.update(base_task, completed=f))
        progress.update(base_task, completed=1.0)

    out.print()
    out.print(_statistics_table(result.controller_status))
    out.print(_effect_table(result, baseline, slo))
    if args.plot:
        try:
            path = plot_timelines([result, baseline], slo, args.plot,
                                  title=f"SLO-aware controller vs static {args.initial_prefill_sm:g}/"
                                        f"{args.initial_decode_sm:g}, {perf.name}", percentile=95)
            out.print(f"plot written to {path}")
        except PlotUnavailableError:
            out.print(f"plot skipped: matplotlib is not installed (enable with: {PLOT_HINT})", markup=False)
    return 0


def _gpu_name(perf: PerfModel) -> str:
    """"H100" for a built-in performance model, "132-SM GPU" for a measured profile."""
    gpu = getattr(perf, "gpu", None)
    return gpu.name.upper() if gpu is not None else f"{perf.total_sms}-SM GPU"


def _cycle_header() -> str:
    return (f"{'cycle':>5} {'time':>7}  {'P/D %':>9}  {'TTFT p95':>9}  {'TPOT p95':>9}  {'TPOT live':>9}  "
            f"{'violations':<22} action\n"
            f"{'':>5} {'(s)':>7}  {'':>9}  {'(ms)':>9}  {'(ms)':>9}  {'(ms)':>9}")


def _cycle_row(n: int, c: CycleRecord) -> str:
    violations = ", ".join(f"{k} x{v:.2f}" for k, v in sorted(c.violations.items())) or "-"
    action = escape(re.sub(r"\d+\.\d+", lambda m: f"{float(m.group()):.0f}", c.action))  # 72.7273/27.2727 -> 73/27
    if c.action not in ("keep", "hold"):
        action = f"[bold yellow]{action}[/]"
    ttft = f"[red]{c.ttft_p95_ms:9.1f}[/]" if "ttft" in c.violations else f"{c.ttft_p95_ms:9.1f}"
    tpot = f"[red]{c.tpot_p95_ms:9.1f}[/]" if "tpot" in c.violations else f"{c.tpot_p95_ms:9.1f}"
    split = f"{c.prefill_percentage:.0f}/{c.decode_percentage:.0f}"
    live = f"{c.streaming_tpot_p95_ms:9.1f}"
    return f"{n:>5} {c.time:>7.1f}  {split:>9}  {ttft}  {tpot}  {live}  {violations:<22} {action}"


def _statistics_table(status: dict[str, Any] | None) -> Table:
    title = "controller statistics (get_controller_status()['statistics'])"
    table = Table(title=title, title_justify="left", min_width=len(title))  # the title never wraps mid-word
    table.add_column("statistic")
    table.add_column("value", justify="right")
    for key, value in ((status or {}).get("statistics") or {}).items():
        if isinstance(value, float):
            text = f"{value:.1%}" if key.endswith("rate") else f"{value:.3f}"
        else:
            text = str(value)
        table.add_row(key, text)
    return table


def _effect_table(result: SimResult, baseline: SimResult, slo: SLOConstraints) -> Table:
    """SLO attainment before the first adjustment, after the last one, and overall, with the
    static starting split on the same requests for comparison."""
    moves = [c.time for c in result.timeline if "->" in c.action]
    table = Table(title="effect: requests meeting both SLOs", title_justify="left")
    table.add_column("requests arriving")
    table.add_column("count", justify="right")
    table.add_column(f"SLO-aware ({result.policy})", justify="right")
    table.add_column(f"static ({baseline.policy})", justify="right")
    spans = [("all (the controller made no adjustment)", 0.0, float("inf"))]
    if moves:
        spans = [(f"before the first adjustment (< {moves[0]:.0f} s)", 0.0, moves[0]),
                 (f"after the last adjustment (>= {moves[-1]:.0f} s)", moves[-1], float("inf")),
                 ("all", 0.0, float("inf"))]
    for label, start, end in spans:
        ours, count = attainment_between(result, slo, start, end)
        theirs, _ = attainment_between(baseline, slo, start, end)
        table.add_row(label, str(count), f"{ours:.1%}" if count else "-", f"{theirs:.1%}" if count else "-")
    return table


def main(argv: list[str] | None = None) -> int:
    """Entry point of `examples/semi_pd/slo_aware_example.py`."""
    parser = argparse.ArgumentParser(prog="slo_aware_example.py", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(sys.argv[1:] if argv is None else argv))
