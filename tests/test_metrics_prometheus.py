"""SemiPDPrometheusExporter: names, histograms fed on completion, gauges, independent registries."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from semipd.allocation import SMAllocation
from semipd.clock import VirtualClock
from semipd.metrics import SemiPDMetricsCollector, SemiPDPrometheusExporter

NAMES = (
    "semipd:time_to_first_token_seconds", "semipd:time_per_output_token_seconds",
    "semipd:inter_token_latency_seconds", "semipd:e2e_request_latency_seconds", "semipd:queue_time_seconds",
    "semipd:num_requests_running", "semipd:num_requests_waiting", "semipd:kv_cache_usage_perc",
    "semipd:sm_allocation_percent", "semipd:slo_violation_ratio", "semipd:sm_reallocations",
)


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _run_request(m: SemiPDMetricsCollector, rid: str, t0: float, n_out: int, gap: float) -> None:
    m.record_request_arrival(rid, 10, timestamp=t0)
    m.record_prefill_start(rid, timestamp=t0 + 0.005)
    m.record_first_token(rid, timestamp=t0 + 0.045)
    for k in range(1, n_out):
        m.record_token(rid, timestamp=t0 + 0.045 + k * gap)
    m.record_request_completion(rid, n_out, timestamp=t0 + 0.045 + (n_out - 1) * gap)


def test_exporter_exposes_design_names_and_feeds_histograms() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    exp = SemiPDPrometheusExporter(m)
    _run_request(m, "a", 0.0, n_out=5, gap=0.0035)
    _run_request(m, "b", 1.0, n_out=3, gap=0.012)
    text = exp.render()
    families = {f.name for f in text_string_to_metric_families(text.decode())}
    for name in NAMES:
        assert name in families, name
    s = _samples(text)
    assert s[("semipd:time_to_first_token_seconds_count", ())] == 2
    assert s[("semipd:time_to_first_token_seconds_bucket", (("le", "0.05"),))] == 2
    assert s[("semipd:time_to_first_token_seconds_bucket", (("le", "0.04"),))] == 0
    assert s[("semipd:time_per_output_token_seconds_bucket", (("le", "0.004"),))] == 1  # 3.5 ms resolved
    assert s[("semipd:time_per_output_token_seconds_bucket", (("le", "0.003"),))] == 0
    assert s[("semipd:time_per_output_token_seconds_count", ())] == 2
    assert s[("semipd:inter_token_latency_seconds_count", ())] == 4 + 2
    assert s[("semipd:queue_time_seconds_bucket", (("le", "0.005"),))] == 2
    assert s[("semipd:e2e_request_latency_seconds_count", ())] == 2
    assert s[("semipd:sm_reallocations_total", (("result", "failure"),))] == 0
    assert exp.render().count(b"time_to_first_token_seconds_count 2.0") == 1  # not observed twice


def test_gauges_reallocations_and_slo_ratio() -> None:
    clock = VirtualClock()
    m = SemiPDMetricsCollector(clock=clock)
    exp = SemiPDPrometheusExporter(m)
    m.record_request_arrival("w", 1, timestamp=0.0)
    m.record_request_arrival("d", 1, timestamp=0.0)
    m.record_first_token("d", timestamp=0.1)
    s = _samples(exp.render())
    assert s[("semipd:num_requests_waiting", ())] == 1 and s[("semipd:num_requests_running", ())] == 1
    m.record_system_metrics(num_running_requests=7, num_waiting_requests=3, kv_cache_usage=0.25,
                            sm_allocation=SMAllocation(62.5, 37.5))
    exp.record_reallocation(True)
    exp.record_reallocation(True)
    exp.record_reallocation(False)
    exp.set_slo_violation_ratio("ttft", 1.3)
    s = _samples(exp.render())
    assert s[("semipd:num_requests_running", ())] == 7 and s[("semipd:num_requests_waiting", ())] == 3
    assert s[("semipd:kv_cache_usage_perc", ())] == 0.25
    assert s[("semipd:sm_allocation_percent", (("phase", "prefill"),))] == 62.5
    assert s[("semipd:sm_allocation_percent", (("phase", "decode"),))] == 37.5
    assert s[("semipd:sm_reallocations_total", (("result", "success"),))] == 2
    assert s[("semipd:sm_reallocations_total", (("result", "failure"),))] == 1
    assert s[("semipd:slo_violation_ratio", (("slo", "ttft"),))] == 1.3


def test_two_exporters_coexist_and_pending_is_bounded() -> None:
    clock = VirtualClock()
    m1, m2 = SemiPDMetricsCollector(clock=clock), SemiPDMetricsCollector(clock=clock)
    e1, e2 = SemiPDPrometheusExporter(m1, max_pending=2), SemiPDPrometheusExporter(m2)
    for i in range(5):
        _run_request(m1, f"r{i}", float(i), n_out=2, gap=0.01)
    _run_request(m2, "x", 0.0, n_out=2, gap=0.01)
    assert e1.dropped_records == 3
    assert _samples(e1.render())[("semipd:time_to_first_token_seconds_count", ())] == 2
    assert _samples(e2.render())[("semipd:time_to_first_token_seconds_count", ())] == 1
    e2.close()
    _run_request(m2, "y", 1.0, n_out=2, gap=0.01)
    assert _samples(e2.render())[("semipd:time_to_first_token_seconds_count", ())] == 1
    assert e1.content_type.startswith("text/plain")
