"""Service-level objectives for goodput and SLO attainment (``--goodput ttft:200 tpot:30``).

Targets are milliseconds, as in ``vllm bench serve``. A request meets the SLOs when it
succeeded and each given metric is within its target. TPOT is undefined for a single
output token; such a request meets any TPOT target (its decode time is zero).
"""

from __future__ import annotations

from collections.abc import Iterable

from semipd.bench.records import RequestRecord

SLO_METRICS: tuple[str, ...] = ("ttft", "tpot", "e2el")


def parse_goodput(items: Iterable[str]) -> dict[str, float]:
    """Parse ``KEY:MS`` pairs into ``{metric: milliseconds}``.

    Raises ValueError naming the offending item: missing colon, unknown metric, a value that
    is not a number, a negative value, or a metric given twice.
    """
    slos: dict[str, float] = {}
    for item in items:
        key, sep, value = item.partition(":")
        key = key.strip().lower()
        if not sep:
            raise ValueError(f"goodput: {item!r} is not KEY:MS (e.g. ttft:200 tpot:30)")
        if key not in SLO_METRICS:
            raise ValueError(f"goodput: unknown metric {key!r} in {item!r}; choose from {', '.join(SLO_METRICS)}")
        try:
            ms = float(value)
        except ValueError:
            raise ValueError(f"goodput: {value!r} in {item!r} is not a number of milliseconds") from None
        if not ms >= 0 or ms == float("inf"):
            raise ValueError(f"goodput: {key} target must be a finite number >= 0 ms, got {value!r}")
        if key in slos:
            raise ValueError(f"goodput: {key} is given twice")
        slos[key] = ms
    return slos


def meets_slos(record: RequestRecord, slos: dict[str, float]) -> bool:
    """True when `record` succeeded and meets every target in `slos` (milliseconds)."""
    if not record.success or record.ttft is None or record.latency is None:
        return False
    measured_ms = {
        "ttft": record.ttft * 1000.0,
        "tpot": (record.tpot or 0.0) * 1000.0,
        "e2el": record.latency * 1000.0,
    }
    return all(measured_ms[key] <= target for key, target in slos.items())
