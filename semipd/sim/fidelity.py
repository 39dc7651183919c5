"""How far a simulation is from a measured run: the side-by-side error table.

`RunStats` holds what one run gives (latency percentiles in ms, throughputs, SLO attainment),
measured or simulated; `compare` pairs two of them into a `FidelityTable`: one `Cell` per
statistic with its error, (simulated - measured) / measured, the mean absolute percentage error
(MAPE) per metric over its percentiles, and the attainment difference in points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from rich import box
from rich.table import Table

LATENCY_METRICS: tuple[str, ...] = ("ttft", "tpot", "itl", "e2e")
PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0)
THROUGHPUTS: tuple[str, ...] = ("request_throughput", "output_throughput")
_LABELS = {"ttft": "TTFT (ms)", "tpot": "TPOT (ms)", "itl": "ITL (ms)", "e2e": "E2E (ms)",
           "request_throughput": "requests/s", "output_throughput": "output tokens/s"}


@dataclass(frozen=True)
class RunStats:
    """One run's figures. `latency_ms[metric][percentile]`; a metric or figure the run lacks is absent / None."""

    latency_ms: Mapping[str, Mapping[float, float]]
    request_throughput: float | None = None
    output_throughput: float | None = None
    slo_attainment: float | None = None


def stats_from_samples(samples_ms: Mapping[str, Sequence[float]], percentiles: Sequence[float] = PERCENTILES, *,
                       request_throughput: float | None = None, output_throughput: float | None = None,
                       slo_attainment: float | None = None) -> RunStats:
    """`RunStats` from raw samples (ms) per metric; a metric without samples is left out."""
    latency = {}
    for metric, values in samples_ms.items():
        array = np.asarray(values, dtype=float)
        if array.size:
            latency[metric] = {float(p): float(np.percentile(array, p)) for p in percentiles}
    return RunStats(latency, request_throughput, output_throughput, slo_attainment)


def slo_attainment(ttft_ms: Sequence[float], tpot_ms: Sequence[float | None], e2e_ms: Sequence[float],
                   slos_ms: Mapping[str, float], num_failed: int = 0) -> float | None:
    """Share of requests within every SLO of `slos_ms` (``ttft``, ``tpot``, ``e2el`` or ``e2e``), as
    ``semipd bench`` counts it: a request without a TPOT (one output token) meets any TPOT target,
    and `num_failed` further requests miss. None without SLOs or requests."""
    n = len(ttft_ms) + num_failed
    if not slos_ms or n == 0:
        return None
    unknown = set(slos_ms) - {"ttft", "tpot", "e2el", "e2e"}
    if unknown:
        raise ValueError(f"slos_ms: unknown metric(s) {sorted(unknown)}")
    ok = 0
    for ttft, tpot, e2e in zip(ttft_ms, tpot_ms, e2e_ms, strict=True):
        value = {"ttft": ttft, "tpot": tpot or 0.0, "e2el": e2e, "e2e": e2e}
        ok += all(value[k] <= target for k, target in slos_ms.items())
    return ok / n


@dataclass(frozen=True)
class Cell:
    """One statistic, measured and simulated."""

    metric: str
    stat: str
    """``p50``, ``p90``, ... for latencies; ``value`` for throughputs."""
    measured: float
    simulated: float

    @property
    def error_pct(self) -> float | None:
        """(simulated - measured) / measured in percent; None when the measured value is 0."""
        return None if self.measured == 0 else 100.0 * (self.simulated - self.measured) / self.measured


@dataclass(frozen=True)
class FidelityTable:
    """A measured run against its simulation."""

    cells: tuple[Cell, ...]
    measured_attainment: float | None = None
    simulated_attainment: float | None = None

    @property
    def attainment_points(self) -> float | None:
        """Simulated minus measured SLO attainment, in percentage points."""
        if self.measured_attainment is None or self.simulated_attainment is None:
            return None
        return 100.0 * (self.simulated_attainment - self.measured_attainment)

    def mape(self, metric: str) -> float | None:
        """Mean absolute error (percent) over `metric`'s cells with an error; None without any."""
        errors = [abs(c.error_pct) for c in self.cells if c.metric == metric and c.error_pct is not None]
        return float(np.mean(errors)) if errors else None

    def within(self, tolerance_pct: float, metrics: Sequence[str] = ("ttft", "tpot"),
               stats: Sequence[str] = ("p50", "p90")) -> tuple[int, int]:
        """(cells within `tolerance_pct`, cells) among `metrics` x `stats` that have an error."""
        errors = [c.error_pct for c in self.cells if c.metric in metrics and c.stat in stats]
        known = [e for e in errors if e is not None]
        return sum(abs(e) <= tolerance_pct for e in known), len(known)

    def to_dict(self) -> dict[str, object]:
        metrics = list(dict.fromkeys(c.metric for c in self.cells))
        return {
            "cells": [{"metric": c.metric, "stat": c.stat, "measured": c.measured, "simulated": c.simulated,
                       "error_pct": c.error_pct} for c in self.cells],
            "mape_pct": {m: self.mape(m) for m in metrics},
            "slo_attainment": {"measured": self.measured_attainment, "simulated": self.simulated_attainment,
                               "difference_points": self.attainment_points},
        }


def compare(measured: RunStats, simulated: RunStats) -> FidelityTable:
    """Pair every statistic both runs have (latency percentiles, then throughputs)."""
    cells = []
    for metric in LATENCY_METRICS:
        mine, theirs = measured.latency_ms.get(metric, {}), simulated.latency_ms.get(metric, {})
        cells += [Cell(metric, _stat(p), mine[p], theirs[p]) for p in mine if p in theirs]
    for name in THROUGHPUTS:
        m, s = getattr(measured, name), getattr(simulated, name)
        if m is not None and s is not None:
            cells.append(Cell(name, "value", m, s))
    return FidelityTable(tuple(cells), measured.slo_attainment, simulated.slo_attainment)


def format_table(table: FidelityTable, title: str | None = None) -> Table:
    """The table for a terminal: one row per metric, measured / simulated (error) per statistic, MAPE."""
    stats = list(dict.fromkeys(c.stat for c in table.cells if c.stat != "value")) or ["value"]
    out = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    out.add_column("metric", style="bold", no_wrap=True)
    for stat in stats:
        out.add_column(f"{stat}\nmeasured / sim (err)", justify="right", no_wrap=True)
    out.add_column("MAPE", justify="right")
    for metric in dict.fromkeys(c.metric for c in table.cells):
        row = {c.stat: c for c in table.cells if c.metric == metric}
        if "value" in row:  # a throughput: its one figure goes in the first column
            row = {stats[0]: row["value"]}
        out.add_row(_LABELS.get(metric, metric), *[_cell_text(row[s]) if s in row else "" for s in stats],
                    _pct(table.mape(metric)))
    if table.attainment_points is not None:
        assert table.measured_attainment is not None and table.simulated_attainment is not None
        out.add_row("SLO attainment", f"{table.measured_attainment:.1%} / {table.simulated_attainment:.1%} "
                                      f"({table.attainment_points:+.1f} pts)", *[""] * len(stats))
    return out


def _stat(p: float) -> str:
    return f"p{p:g}"


def _cell_text(cell: Cell) -> str:
    err = cell.error_pct
    return f"{_num(cell.measured)} / {_num(cell.simulated)} ({'n/a' if err is None else f'{err:+.0f}%'})"


def _num(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:.0f}%"
