"""Speed of the metrics collector on the CPU.

- Each ``record_*`` call: timed one call at a time with ``perf_counter_ns`` over `--requests`
  distinct request ids (each request goes through the whole lifecycle), the median timer
  overhead subtracted; median, p90 and p99 per method. Target: median <= 3 us.
- ``get_current_window_metrics()`` with `--requests` finished requests in the window (each with a
  first token and one ITL sample); median of `--repeats` calls. Target: <= 20 ms.
- For reference (no target): ``get_real_time_metrics()``, ``snapshot()``, and
  ``MetricsAggregator.get_aggregated_metrics()`` over that snapshot.

    python benchmarks/bench_metrics.py [--requests 100000] [--out benchmarks/results/metrics_cpu.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import numpy as np

from semipd.metrics import MetricsAggregator, SemiPDMetricsCollector

RECORD_TARGET_US = 3.0
WINDOW_TARGET_MS = 20.0


def timer_overhead_ns(n: int = 100_000) -> float:
    pc = time.perf_counter_ns
    samples = []
    for _ in range(n):
        t0 = pc()
        samples.append(pc() - t0)
    return statistics.median(samples)


def time_each(call: Callable[[str], object], rids: list[str], overhead_ns: float) -> dict[str, float]:
    """Per-call times (us, timer overhead subtracted) of `call(rid)` for every rid."""
    pc = time.perf_counter_ns
    samples = []
    for rid in rids:
        t0 = pc()
        call(rid)
        samples.append(pc() - t0)
    arr = (np.asarray(samples, dtype=np.float64) - overhead_ns) / 1000.0
    return {"median_us": float(np.median(arr)), "p90_us": float(np.percentile(arr, 90)),
            "p99_us": float(np.percentile(arr, 99))}


def time_repeated(call: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds of `repeats` calls."""
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1000.0, min(samples) * 1000.0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run(n: int, repeats: int) -> dict:
    load_before = os.getloadavg()[0]
    overhead = timer_overhead_ns()
    m = SemiPDMetricsCollector(window_size_seconds=3600.0, max_history_size=n, max_itl_samples=n)
    rids = [f"req-{i}" for i in range(n)]
    record = {
        "record_request_arrival": time_each(lambda r: m.record_request_arrival(r, 512), rids, overhead),
        "record_prefill_start": time_each(m.record_prefill_start, rids, overhead),
        "record_first_token": time_each(m.record_first_token, rids, overhead),
        "record_prefill_end": time_each(m.record_prefill_end, rids, overhead),
        "record_decode_start": time_each(m.record_decode_start, rids, overhead),
        "record_token": time_each(m.record_token, rids, overhead),
        "record_request_completion": time_each(lambda r: m.record_request_completion(r, 128), rids, overhead),
    }
    agg = m.get_current_window_metrics()
    assert agg.num_completed == n and agg.num_ttft_samples == n and not agg.window_truncated
    window_ms, window_min_ms = time_repeated(m.get_current_window_metrics, repeats)
    real_time_ms, _ = time_repeated(m.get_real_time_metrics, repeats)
    snapshot_ms, _ = time_repeated(m.snapshot, 3)
    aggregator = MetricsAggregator(window_size_seconds=3600.0)
    aggregator.update_decode_metrics(m.snapshot())
    aggregator_ms, _ = time_repeated(aggregator.get_aggregated_metrics, 3)
    worst_record = max(v["median_us"] for v in record.values())
    return {
        "benchmark": "semipd.metrics collector",
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
            "numpy": np.__version__,
            "msgpack": ".".join(map(str, msgpack.version)),
        },
        "load_average_1m": {"before": load_before, "after": os.getloadavg()[0]},
        "requests": n,
        "timer_overhead_ns": overhead,
        "record_calls": record,
        "window_metrics_ms": window_ms,
        "window_metrics_min_ms": window_min_ms,
        "real_time_metrics_ms": real_time_ms,
        "snapshot_ms": snapshot_ms,
        "aggregator_ms": aggregator_ms,
        "targets": {"record_median_us": RECORD_TARGET_US, "window_metrics_ms": WINDOW_TARGET_MS},
        "meets_targets": worst_record <= RECORD_TARGET_US and window_ms <= WINDOW_TARGET_MS,
    }


def print_table(result: dict) -> None:
    print(f"semipd.metrics on {result['machine']['cpu']} ({result['machine']['cpu_count']} cpus), "
          f"Python {result['machine']['python']}, numpy {result['machine']['numpy']}, {result['date']}")
    load = result["load_average_1m"]
    print(f"1-minute load average {load['before']:.2f} before, {load['after']:.2f} after "
          f"(other work on the machine inflates the figures)")
    print(f"{'call':<30} {'median us':>10} {'p90 us':>10} {'p99 us':>10}")
    for name, v in result["record_calls"].items():
        print(f"{name:<30} {v['median_us']:>10.3f} {v['p90_us']:>10.3f} {v['p99_us']:>10.3f}")
    n = result["requests"]
    print(f"get_current_window_metrics ({n:,} finished in window): {result['window_metrics_ms']:.2f} ms median, "
          f"{result['window_metrics_min_ms']:.2f} ms min (target <= {WINDOW_TARGET_MS:g} ms)")
    print(f"get_real_time_metrics: {result['real_time_metrics_ms']:.2f} ms; snapshot(): "
          f"{result['snapshot_ms']:.1f} ms; MetricsAggregator over the snapshot: {result['aggregator_ms']:.1f} ms")
    print(f"meets targets: {result['meets_targets']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metrics_cpu.json")
    args = parser.parse_args()
    result = run(args.requests, args.repeats)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
