"""Benchmark statistics, goodput parsing and SLO checks against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from semipd.bench.goodput import meets_slos, parse_goodput
from semipd.bench.records import RequestRecord
from semipd.bench.report import format_failures, format_summary
from semipd.bench.stats import (
    metric_samples_ms,
    parse_metric_names,
    parse_percentiles,
    peak_concurrency,
    percentile_label,
    summarize,
)


def _records() -> list[RequestRecord]:
    # Send times and latencies are binary fractions so the interval arithmetic is exact.
    return [
        RequestRecord(0, 0.0, 0.0, 10, 3, output_tokens=3, ttft=0.1, itls=(0.02, 0.03), latency=0.25),
        RequestRecord(1, 0.125, 0.125, 20, 2, output_tokens=2, ttft=0.3, itls=(0.01,), latency=0.5),
        RequestRecord(2, 0.5, 0.5, 30, 1, output_tokens=1, ttft=0.2, itls=(), latency=0.25),
        RequestRecord(3, 0.625, 0.625, 40, 8, latency=0.0625, error="HTTP 500: boom"),
    ]


def test_tpot_per_request() -> None:
    r0, r1, r2, r3 = _records()
    assert r0.tpot == pytest.approx((0.25 - 0.1) / 2)
    assert r1.tpot == pytest.approx(0.2)
    assert r2.tpot is None  # one output token
    assert r3.tpot is None and not r3.success


def test_summary_matches_hand_computed_values() -> None:
    s = summarize(_records(), duration=2.0, slos={"ttft": 250.0, "tpot": 100.0}, percentiles=(50, 90, 99))
    assert (s.num_requests, s.completed, s.failed) == (4, 3, 1)
    assert s.total_input_tokens == 60 and s.total_output_tokens == 6
    assert s.request_throughput == pytest.approx(1.5)
    assert s.output_throughput == pytest.approx(3.0)
    assert s.total_token_throughput == pytest.approx(33.0)
    ttft = s.metrics["ttft"]  # [100, 300, 200] ms
    assert ttft.count == 3
    assert ttft.mean == pytest.approx(200.0)
    assert ttft.median == pytest.approx(200.0)
    assert ttft.std == pytest.approx(math.sqrt(20000 / 3))
    assert dict(ttft.percentiles) == pytest.approx({50: 200.0, 90: 280.0, 99: 298.0})
    tpot = s.metrics["tpot"]  # [75, 200] ms
    assert tpot.count == 2
    assert tpot.mean == pytest.approx(137.5)
    assert dict(tpot.percentiles)[90] == pytest.approx(75 + 0.9 * 125)
    itl = s.metrics["itl"]  # [20, 30, 10] ms
    assert itl.count == 3 and itl.mean == pytest.approx(20.0)
    assert dict(itl.percentiles)[90] == pytest.approx(28.0)
    e2el = s.metrics["e2el"]  # [250, 500, 250] ms
    assert e2el.mean == pytest.approx(1000 / 3) and e2el.median == pytest.approx(250.0)
    # r0 (100 ms, 75 ms) and r2 (200 ms, no TPOT) meet; r1's TTFT misses; r3 failed.
    assert s.good_requests == 2
    assert s.slo_attainment == pytest.approx(0.5)
    assert s.request_goodput == pytest.approx(1.0)
    assert s.peak_concurrency == 2
    assert s.num_short_outputs == 0


def test_summary_without_slos_and_json_keys() -> None:
    s = summarize(_records(), duration=1.0, percentiles=(99, 99.9))
    assert s.good_requests is None and s.slo_attainment is None and s.request_goodput is None
    d = s.to_dict()
    for key in ("p99_ttft_ms", "p99.9_ttft_ms", "mean_tpot_ms", "median_itl_ms", "std_e2el_ms", "completed"):
        assert key in d
    assert d["failed"] == 1


def test_e2el_slo_and_failures_are_misses() -> None:
    records = _records()
    assert [meets_slos(r, {"e2el": 250.0}) for r in records] == [True, False, True, False]
    assert summarize(records, 1.0, {"e2el": 10_000.0}).slo_attainment == pytest.approx(0.75)


def test_all_failed_has_empty_metrics() -> None:
    failed = [RequestRecord(i, 0.0, 0.0, 5, 5, error="refused") for i in range(3)]
    s = summarize(failed, 1.0, {"ttft": 1.0})
    assert s.completed == 0 and s.failed == 3 and s.slo_attainment == 0.0
    assert s.metrics["ttft"].count == 0 and s.metrics["ttft"].mean == 0.0
    assert "n/a" in format_summary(s)


def test_short_outputs_counted() -> None:
    r = RequestRecord(0, 0.0, 0.0, 5, 10, output_tokens=4, ttft=0.1, itls=(0.1,) * 3, latency=0.4)
    assert summarize([r], 1.0).num_short_outputs == 1


def test_peak_concurrency_touching_intervals_do_not_overlap() -> None:
    a = RequestRecord(0, 0.0, 0.0, 1, 1, output_tokens=1, ttft=0.5, latency=1.0)
    b = RequestRecord(1, 1.0, 1.0, 1, 1, output_tokens=1, ttft=0.5, latency=1.0)
    c = RequestRecord(2, 0.5, 0.5, 1, 1, output_tokens=1, ttft=0.5, latency=1.0)
    assert peak_concurrency([a, b]) == 1
    assert peak_concurrency([a, b, c]) == 2


def test_metric_samples_in_ms() -> None:
    np.testing.assert_allclose(metric_samples_ms(_records(), "itl"), [20.0, 30.0, 10.0])
    with pytest.raises(ValueError, match="metric"):
        metric_samples_ms(_records(), "latency")


def test_summary_rejects_zero_duration() -> None:
    with pytest.raises(ValueError, match="duration"):
        summarize(_records(), 0.0)


def test_parse_goodput_valid() -> None:
    assert parse_goodput(["ttft:200", "TPOT:30.5", "e2el:1000"]) == {"ttft": 200.0, "tpot": 30.5, "e2el": 1000.0}
    assert parse_goodput([]) == {}


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["ttft"], "not KEY:MS"),
        (["ttft=200"], "not KEY:MS"),
        (["itl:20"], "unknown metric 'itl'"),
        (["ttft:abc"], "not a number"),
        (["ttft:-5"], ">= 0"),
        (["ttft:nan"], ">= 0"),
        (["ttft:inf"], "finite"),
        (["ttft:200", "ttft:300"], "twice"),
    ],
)
def test_parse_goodput_errors(items: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_goodput(items)


def test_parse_percentiles_and_metrics() -> None:
    assert parse_percentiles("50,90,99.9") == (50.0, 90.0, 99.9)
    for bad in ("0", "101", "x", "50,"):
        with pytest.raises(ValueError, match="metric-percentiles"):
            parse_percentiles(bad)
    assert parse_metric_names("ttft, E2EL") == ("ttft", "e2el")
    for bad in ("ttft,foo", ""):
        with pytest.raises(ValueError, match="percentile-metrics"):
            parse_metric_names(bad)
    assert percentile_label(99) == "p99" and percentile_label(99.9) == "p99.9"


def test_report_lists_every_failure_group() -> None:
    records = _records() + [RequestRecord(4, 0.7, 0.7, 1, 1, latency=0.01, error="stream ended before [DONE]")]
    text = format_failures(records)
    assert "Failed requests: 2" in text
    assert "1 x HTTP 500: boom" in text and "1 x stream ended before [DONE]" in text
    assert format_failures(_records()[:3]) == ""
    more = format_failures(records, limit=1)
    assert "1 more causes (1 requests" in more and "stream ended" not in more
    summary_text = format_summary(summarize(records, 2.0, {"ttft": 250.0}), max_concurrency=4)
    assert "Failed requests:" in summary_text and "SLO attainment (ttft:250 ms):" in summary_text
    assert "P90 TTFT (ms):" in summary_text


def test_one_root_cause_is_one_line() -> None:
    # 100 refusals that differ only in the token id (as a small-vocabulary server words them) are one cause.
    records = [RequestRecord(i, 0.0, 0.0, 4, 2, latency=0.01,
                             error=f"HTTP 400: token id {1000 + 7 * i} is out of the vocabulary (size 512)")
               for i in range(100)]
    lines = format_failures(records).splitlines()
    assert len(lines) == 3  # rule, the cause, rule
    assert lines[1].strip() == "100 x HTTP 400: token id 1000 is out of the vocabulary (size 512)"
