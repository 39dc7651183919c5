"""Text report of one run, laid out like ``vllm bench serve``'s, and the JSON result file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semipd.bench.failures import group_failures
from semipd.bench.records import RequestRecord
from semipd.bench.stats import BenchSummary, percentile_label

_WIDTH = 50
_LABEL = 40
_TITLES: dict[str, tuple[str, str]] = {
    "ttft": ("Time to First Token", "TTFT"),
    "tpot": ("Time per Output Token (excl. 1st token)", "TPOT"),
    "itl": ("Inter-token Latency", "ITL"),
    "e2el": ("End-to-end Latency", "E2EL"),
}
MAX_LISTED_CAUSES = 10


def _line(label: str, value: object) -> str:
    return f"{label:<{_LABEL}}{value}"


def _rule(title: str, fill: str = "-") -> str:
    return f" {title} ".center(_WIDTH, fill) if title else fill * _WIDTH


def format_summary(summary: BenchSummary, max_concurrency: int | None = None) -> str:
    """The result block: counts, throughputs, goodput and SLO attainment, latency statistics."""
    lines = [_rule("Serving Benchmark Result", "=")]
    lines += [
        _line("Successful requests:", summary.completed),
        _line("Failed requests:", summary.failed),
        _line("Maximum request concurrency:", max_concurrency if max_concurrency else "unlimited"),
        _line("Peak concurrent requests:", summary.peak_concurrency),
        _line("Benchmark duration (s):", f"{summary.duration:.2f}"),
        _line("Total input tokens:", summary.total_input_tokens),
        _line("Total generated tokens:", summary.total_output_tokens),
        _line("Request throughput (req/s):", f"{summary.request_throughput:.2f}"),
    ]
    if summary.request_goodput is not None:
        slos = " ".join(f"{k}:{v:g}" for k, v in summary.slos.items())
        lines += [
            _line("Request goodput (req/s):", f"{summary.request_goodput:.2f}"),
            _line(f"SLO attainment ({slos} ms):", f"{summary.slo_attainment:.4f}"),
        ]
    lines += [
        _line("Output token throughput (tok/s):", f"{summary.output_throughput:.2f}"),
        _line("Total token throughput (tok/s):", f"{summary.total_token_throughput:.2f}"),
    ]
    if summary.num_short_outputs:
        lines.append(_line("Requests short of max_tokens:", summary.num_short_outputs))
    for name, st in summary.metrics.items():
        title, short = _TITLES[name]
        lines.append(_rule(title))
        if st.count == 0:
            lines.append(_line(f"{short} (ms):", "n/a (no samples)"))
            continue
        lines += [_line(f"Mean {short} (ms):", f"{st.mean:.2f}"), _line(f"Median {short} (ms):", f"{st.median:.2f}")]
        # The median line already shows p50; the JSON keeps both.
        lines += [_line(f"{percentile_label(p).upper()} {short} (ms):", f"{v:.2f}")
                  for p, v in st.percentiles if p != 50]
    lines.append(_rule(""))
    return "\n".join(lines)


def format_failures(records: Sequence[RequestRecord], limit: int = MAX_LISTED_CAUSES) -> str:
    """Failed requests: one line per cause (`semipd.bench.failures`) with its count and first message,
    at most `limit` causes ('' when nothing failed). Every request's error is in the JSON result."""
    failed = [r for r in records if not r.success]
    if not failed:
        return ""
    groups = group_failures(r.error for r in failed)
    lines = [_rule(f"Failed requests: {len(failed)}")]
    lines += [f"{g.count:>6} x {g.example}" for g in groups[:limit]]
    if len(groups) > limit:
        rest = sum(g.count for g in groups[limit:])
        lines.append(f"  ... {len(groups) - limit} more causes ({rest} requests; every error is in --output-json)")
    lines.append(_rule(""))
    return "\n".join(lines)


def result_json(summary: BenchSummary, records: Sequence[RequestRecord], config: dict[str, Any]) -> dict[str, Any]:
    """The ``--output-json`` document: run settings, the summary's flat keys, every request."""
    return {**config, **summary.to_dict(), "requests": [r.to_dict() for r in records]}


def write_json(path: str | Path, document: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
