"""PNG plot of a request-rate sweep (matplotlib, imported only here and only when called)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from semipd.bench.stats import percentile_label
from semipd.bench.sweep import Capacity, SweepPoint


def plot_sweep(points: Sequence[SweepPoint], target: float, capacity: Capacity, path: str | Path) -> Path:
    """Four panels against request rate: SLO attainment, throughput and goodput, TTFT and TPOT
    percentiles. Raises ValueError with an install hint when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ValueError("plot: matplotlib is not installed (pip install 'semipd[plot]')") from exc
    if not points:
        raise ValueError("points must not be empty")
    rates = [p.rate for p in points]
    slos = points[0].summary.slos
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    ax = axes[0][0]
    ax.plot(rates, [p.summary.slo_attainment for p in points], "o-", label="attainment")
    ax.axhline(target, color="grey", linestyle="--", label=f"target {target:.0%}")
    if capacity.interpolated_rate is not None and not capacity.all_met:
        ax.axvline(capacity.interpolated_rate, color="tab:red", linestyle=":",
                   label=f"capacity ~{capacity.interpolated_rate:.2f} req/s")
    ax.set(title="SLO attainment (" + ", ".join(f"{k} {v:g} ms" for k, v in slos.items()) + ")",
           xlabel="request rate (req/s)", ylabel="fraction of requests", ylim=(-0.02, 1.02))
    ax.legend()
    ax = axes[0][1]
    ax.plot(rates, rates, color="lightgrey", linestyle="--", label="offered")
    ax.plot(rates, [p.summary.request_throughput for p in points], "o-", label="throughput")
    ax.plot(rates, [p.summary.request_goodput for p in points], "s-", label="goodput")
    ax.set(title="Throughput and goodput", xlabel="request rate (req/s)", ylabel="req/s")
    ax.legend()
    for ax, metric, title in ((axes[1][0], "ttft", "TTFT"), (axes[1][1], "tpot", "TPOT")):
        for i, (pct, _) in enumerate(points[0].summary.metrics[metric].percentiles):
            values = [p.summary.metrics[metric].percentiles[i][1] for p in points]
            ax.plot(rates, values, "o-", label=percentile_label(pct))
        if metric in slos:
            ax.axhline(slos[metric], color="grey", linestyle="--", label="SLO")
        ax.set(title=title, xlabel="request rate (req/s)", ylabel="ms")
        ax.set_ylim(bottom=0)
        ax.legend()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
