"""Reports of simulation runs: the policy comparison table and the timeline plot.

The plot needs matplotlib (the `plot` extra); it is imported only when a plot is asked
for, and `PlotUnavailableError` says how to install it when it is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table

from semipd.slo.constraints import SLOConstraints

if TYPE_CHECKING:
    from semipd.sim.results import SimResult

PLOT_HINT = 'pip install -e ".[plot]"'
_CLIP_TARGETS = 6
"""Latency axes stop at this many times their target; points above it are marked at the top edge."""
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


def policy_table(summaries: Mapping[str, Mapping[str, Any]], slo: SLOConstraints, title: str | None = None) -> Table:
    """One row per policy: SLO attainment (both targets met), TTFT and TPOT p50/p90/p99,
    throughput, goodput and reallocations. The best attainment is highlighted."""
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("policy", style="bold", no_wrap=True)
    table.add_column("SLO\nmet", justify="right")
    table.add_column("TTFT ms\np50/p90/p99", justify="right", no_wrap=True)
    table.add_column("TPOT ms\np50/p90/p99", justify="right", no_wrap=True)
    table.add_column("req/s", justify="right")
    table.add_column("out\ntok/s", justify="right")
    table.add_column("goodput\nreq/s", justify="right")
    table.add_column("re-\nalloc", justify="right")
    table.add_column("aborted/\npreempted", justify="right")
    best = max((s["slo_attainment"] for s in summaries.values()), default=None)
    for name, s in summaries.items():
        attained = f"{s['slo_attainment']:.1%}"
        if best is not None and s["slo_attainment"] == best:
            attained = f"[bold green]{attained}[/]"
        table.add_row(
            name,
            attained,
            _triple(s, "ttft"),
            _triple(s, "tpot"),
            f"{s['throughput_rps']:.2f}",
            f"{s['output_tokens_per_s']:.0f}",
            f"{s['goodput_rps']:.2f}",
            str(s["num_reallocations"]),
            f"{s['num_aborted']} / {s['num_preemptions']}",
        )
    return table


def attainment_between(result: SimResult, slo: SLOConstraints, start: float, end: float) -> tuple[float, int]:
    """(SLO attainment, count) of the requests of `result` that arrived in [start, end)."""
    subset = [r for r in result.requests if start <= r.arrival < end]
    if not subset:
        return 0.0, 0
    return float(replace(result, requests=subset).summary(slo)["slo_attainment"]), len(subset)


def plot_timelines(results: Sequence[SimResult], slo: SLOConstraints, path: str | Path,
                   title: str | None = None, percentile: int = 90) -> Path:
    """Write a PNG of the policies' timelines: prefill SM share, windowed TTFT and TPOT
    (`percentile` 90 or 95) against their targets, and the load (arrival rate, prefill
    queue). One line per policy; windows without samples leave gaps. The latency axes stop
    at six times their target: points above are drawn as triangles on the top edge."""
    if percentile not in (90, 95):
        raise ValueError(f"percentile must be 90 or 95, got {percentile}")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotUnavailableError(f"plotting needs matplotlib, which is not installed ({PLOT_HINT})") from exc

    fig = Figure(figsize=(11, 13), layout="constrained")
    FigureCanvasAgg(fig)
    ax_alloc, ax_ttft, ax_tpot, ax_rate, ax_queue = fig.subplots(5, 1, sharex=True)
    latency: dict[str, list[tuple[list[float], list[float], str]]] = {"ttft": [], "tpot": []}
    for i, result in enumerate(results):
        color = _COLORS[i % len(_COLORS)]
        t = [c.time for c in result.timeline]
        style = {"color": color, "label": result.policy, "linewidth": 1.5}
        ax_alloc.step(t, [c.prefill_percentage for c in result.timeline], where="post", **style)
        for metric, ax in (("ttft", ax_ttft), ("tpot", ax_tpot)):
            values = [_gap(getattr(c, f"{metric}_p{percentile}_ms")) for c in result.timeline]
            ax.plot(t, values, **style)
            latency[metric].append((t, values, color))
        ax_queue.plot(t, [c.num_waiting_prefill for c in result.timeline], **style)
        if i == 0:
            ax_rate.plot(t, [c.arrival_rate for c in result.timeline], color="black", linewidth=1.5)
    ax_ttft.axhline(slo.ttft_target_ms, color="red", linestyle="--", linewidth=1, label="target")
    ax_tpot.axhline(slo.tpot_target_ms, color="red", linestyle="--", linewidth=1, label="target")
    ax_alloc.set_ylabel("prefill SMs (%)")
    ax_alloc.set_ylim(0, 105)
    ax_ttft.set_ylabel(f"TTFT p{percentile} (ms)")
    ax_tpot.set_ylabel(f"TPOT p{percentile} (ms)")
    ax_rate.set_ylabel("arrivals (req/s)")
    ax_queue.set_ylabel("waiting for prefill")
    ax_queue.set_xlabel("time (s)")
    for metric, ax, target in (("ttft", ax_ttft, slo.ttft_target_ms), ("tpot", ax_tpot, slo.tpot_target_ms)):
        top = ax.get_ylim()[1]
        limit = min(top, _CLIP_TARGETS * target) if top > 0 else 1
        ax.set_ylim(0, limit)
        _mark_clipped(ax, latency[metric], limit)
    for ax in (ax_alloc, ax_ttft, ax_tpot, ax_rate, ax_queue):
        ax.grid(True, alpha=0.3)
    ax_alloc.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax_ttft.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    if title:
        fig.suptitle(title)
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path


def _mark_clipped(ax: Any, series: Sequence[tuple[list[float], list[float], str]], limit: float) -> None:
    """Draw a triangle at the top edge of `ax` over each point of `series` (times, values, color)
    above `limit`, and say so in the corner."""
    clipped = 0
    for times, values, color in series:
        over = [t for t, v in zip(times, values, strict=True) if v > limit]
        if over:
            ax.plot(over, [limit] * len(over), linestyle="none", marker="^", markersize=7, color=color,
                    clip_on=False, zorder=5)
            clipped += len(over)
    if clipped:
        ax.text(0.01, 0.97, f"\u25b2 above {limit:.0f} ms, off the scale ({clipped} points)", transform=ax.transAxes,
                ha="left", va="top", fontsize="small", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0})


def _gap(value_ms: float) -> float:
    """A window without samples reports 0: plot it as a gap."""
    return value_ms if value_ms > 0 else float("nan")


def _triple(summary: Mapping[str, Any], metric: str) -> str:
    return "/".join(_ms(summary[f"{metric}_{p}_ms"]) for p in ("p50", "p90", "p99"))


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"
