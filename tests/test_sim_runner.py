"""run_policy end to end: completeness, KV accounting, determinism, policies, summaries."""

from __future__ import annotations

import pytest

from semipd.sim.policy import Policy, parse_policy
from semipd.sim.results import RequestRecord, SimResult
from semipd.sim.runner import SimConfig, run_policy
from semipd.slo import SLOConstraints
from semipd.workload import LengthDist, WorkloadRequest, synthetic_workload

SLO = SLOConstraints(ttft_target_ms=300, tpot_target_ms=30)
POLICIES = ["unified", "static:60/40", "slo:heuristic", "slo:paper", "slo:profile"]


@pytest.fixture(scope="module")
def workload():
    return synthetic_workload(8, duration=40, input_len=LengthDist.uniform(100, 3000),
                              output_len=LengthDist.uniform(1, 300), seed=3)


@pytest.fixture(scope="module")
def results(workload):
    config = SimConfig(slo=SLO, monitoring_interval=2.0, window_size_seconds=10.0)
    return {p: run_policy(workload, p, config) for p in POLICIES}


def test_parse_policy():
    assert parse_policy("unified") == Policy("unified")
    p = parse_policy("static:70/30")
    assert p.kind == "static" and p.allocation.prefill_percentage == 70 and str(p) == "static:70/30"
    assert parse_policy("STATIC:40").allocation.decode_percentage == 60
    assert parse_policy("slo:paper").predictor == "paper"
    for bad in ("static:90/20", "static:x/y", "slo:oracle", "fast", "unified:1"):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_config_validation_names_the_field():
    for field, value in (("block_size", 0), ("monitoring_interval", 0.0), ("switch_delay_s", -1.0),
                         ("initial_prefill_percentage", 100.0), ("num_kv_blocks", 0), ("kv_watermark", 1.0),
                         ("iteration_time_noise", float("nan")), ("max_decode_batch", 2.5)):
        with pytest.raises(ValueError, match=field):
            SimConfig(**{field: value})


@pytest.mark.parametrize("policy", POLICIES)
def test_every_request_finishes_and_every_block_returns(results, workload, policy):
    r = results[policy]
    assert r.policy == policy and len(r.requests) == len(workload)
    for rec, w in zip(r.requests, workload, strict=True):
        assert rec.finished and rec.output_len == w.output_len and rec.input_len == w.input_len
        assert rec.arrival <= rec.first_token <= rec.completion
        assert (rec.tpot_ms is None) == (w.output_len == 1)
    assert r.extra["kv_blocks_in_use_at_end"] == 0
    assert r.timeline and r.timeline[0].time == pytest.approx(workload[0].arrival_time + 2.0)
    s = r.summary(SLO)
    assert s["num_finished"] == len(workload) and s["num_aborted"] == 0
    assert 0 <= s["slo_attainment"] <= min(s["ttft_attainment"], s["tpot_attainment"]) <= 1


def test_policies_differ_and_only_slo_moves(results):
    assert results["unified"].timeline[0].prefill_percentage == 100.0
    assert results["static:60/40"].num_reallocations == 0
    assert results["static:60/40"].extra["initial_prefill_sms"] == 80  # 79.2 SMs snapped to the 8-SM grid
    assert all(c.action == "keep" for c in results["static:60/40"].timeline)
    assert results["slo:paper"].controller_status["statistics"]["total_decisions"] == len(
        results["slo:paper"].timeline)
    ttfts = {p: r.summary(SLO)["ttft_p90_ms"] for p, r in results.items()}
    assert len(set(ttfts.values())) > 1


def test_runs_are_deterministic(workload, results):
    config = SimConfig(slo=SLO, monitoring_interval=2.0, window_size_seconds=10.0)
    again = run_policy(workload, "slo:paper", config)
    first = results["slo:paper"]
    assert again.requests == first.requests and again.timeline == first.timeline


def test_time_noise_is_seeded(workload):
    noisy = [run_policy(workload[:100], "static:50/50", SimConfig(slo=SLO, iteration_time_noise=0.2, seed=s))
             for s in (1, 1, 2)]
    assert noisy[0].requests == noisy[1].requests != noisy[2].requests


@pytest.mark.parametrize("policy", ["unified", "static:50/50"])
def test_tiny_kv_pool_preempts_but_loses_nothing(policy):
    wl = synthetic_workload(50, num_requests=150, input_len=LengthDist.uniform(50, 400),
                            output_len=LengthDist.uniform(50, 400), seed=5)
    r = run_policy(wl, policy, SimConfig(slo=SLO, num_kv_blocks=120, block_size=16))
    s = r.summary(SLO)
    assert s["num_preemptions"] > 0 and s["num_finished"] == 150
    assert [x.output_len for x in r.requests] == [w.output_len for w in wl]
    assert r.extra["kv_blocks_in_use_at_end"] == 0


def test_request_that_can_never_fit_is_aborted():
    wl = [WorkloadRequest(0.0, 100, 10), WorkloadRequest(0.1, 5000, 10)]
    r = run_policy(wl, "static:50/50", SimConfig(slo=SLO, num_kv_blocks=64, block_size=16))
    assert [x.finished for x in r.requests] == [True, False]
    assert r.summary(SLO)["num_aborted"] == 1


def test_progress_and_cycle_callbacks(workload):
    progress, cycles = [], []
    r = run_policy(workload[:60], "slo:heuristic", SimConfig(slo=SLO, monitoring_interval=1.0),
                   on_progress=progress.append, on_cycle=cycles.append)
    assert progress[-1] == 1.0 and progress == sorted(progress)
    assert cycles == r.timeline


def test_summary_counts_and_one_token_outputs():
    def rec(rid, ttft, tpot, out=10, finished=True):
        return RequestRecord(rid, 0.0, ttft / 1000, 1.0, 100, out, ttft, tpot, finished, 0)

    result = SimResult("x", [rec("a", 100, 20), rec("b", 400, 20), rec("c", 100, 40), rec("d", 100, None, out=1),
                             RequestRecord("e", 0.0, None, None, 100, 0, None, None, False, 0)],
                       [], 0, None, 2.0, 0.1)
    s = result.summary(SLO)
    assert s["slo_attainment"] == pytest.approx(2 / 5)  # a, d (one token: TTFT alone)
    assert s["ttft_attainment"] == pytest.approx(3 / 5)
    assert s["tpot_attainment"] == pytest.approx(2 / 4)  # a, b of a, b, c and the unfinished e
    assert s["goodput_rps"] == pytest.approx(1.0) and s["throughput_rps"] == pytest.approx(2.0)
    assert s["num_finished"] == 4 and s["num_aborted"] == 1 and s["output_tokens_per_s"] == pytest.approx(15.5)
