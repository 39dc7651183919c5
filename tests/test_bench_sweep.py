"""Request-rate sweep: rate parsing, SLO capacity, table and plot."""

from __future__ import annotations

from pathlib import Path

import pytest

from semipd.bench.records import RequestRecord
from semipd.bench.stats import summarize
from semipd.bench.sweep import Capacity, SweepPoint, find_capacity, format_capacity, format_sweep_table, parse_rates


def _point(rate: float, attainment: float) -> SweepPoint:
    """A point whose requests meet a 100 ms TTFT target in the given fraction (of 20)."""
    good = round(attainment * 20)
    records = [
        RequestRecord(i, 0.0, 0.0, 8, 4, output_tokens=4, ttft=0.05 if i < good else 0.5, itls=(0.01,) * 3,
                      latency=0.08 if i < good else 0.53)
        for i in range(20)
    ]
    return SweepPoint(rate, summarize(records, 2.0, {"ttft": 100.0}), {})


def test_parse_rates() -> None:
    assert parse_rates("8, 2,4.5") == (2.0, 4.5, 8.0)
    for bad, message in (("2,x", "not a number"), ("0,1", "> 0"), ("inf", "finite"), ("2,2", "repeats")):
        with pytest.raises(ValueError, match=message):
            parse_rates(bad)


def test_capacity_interpolates_the_crossing() -> None:
    points = [_point(2, 1.0), _point(4, 0.95), _point(8, 0.75), _point(16, 0.95)]
    cap = find_capacity(points, 0.9)
    assert cap.highest_rate == 4 and not cap.all_met
    # Attainment falls from 0.95 at 4 to 0.75 at 8: it crosses 0.9 a quarter of the way.
    assert cap.interpolated_rate == pytest.approx(5.0)
    assert "Highest rate with at least 90% SLO attainment (ttft:100 ms): 4 req/s" in format_capacity(
        cap, 0.9, {"ttft": 100.0})


def test_capacity_edges() -> None:
    assert find_capacity([_point(1, 0.5), _point(2, 0.95)], 0.9) == Capacity(None, None, False)
    cap = find_capacity([_point(1, 1.0), _point(2, 0.9)], 0.9)
    assert cap == Capacity(2, 2, True)
    assert "at least 2 req/s" in format_capacity(cap, 0.9, {"ttft": 100.0})
    assert "No swept rate" in format_capacity(Capacity(None, None, False), 0.9, {"ttft": 100.0})
    with pytest.raises(ValueError, match="target"):
        find_capacity([_point(1, 1.0)], 0.0)
    bare = SweepPoint(1.0, summarize([], 1.0), {})
    with pytest.raises(ValueError, match="SLOs"):
        find_capacity([bare], 0.9)


def test_table_and_plot(tmp_path: Path) -> None:
    points = [_point(2, 1.0), _point(4, 0.8)]
    table = format_sweep_table(points).splitlines()
    assert len(table) == 4 and table[0].split()[-2:] == ["TPOT", "p99"] and "ms" in table[-1]
    assert table[2].split()[:8] == ["4", "20", "0", "10.00", "-", "-", "8.00", "0.800"]
    assert points[1].to_dict()["request_rate"] == 4 and points[1].to_dict()["errors"] == {}
    pytest.importorskip("matplotlib")
    from semipd.bench.plot import plot_sweep

    png = plot_sweep(points, 0.9, find_capacity(points, 0.9), tmp_path / "out" / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
