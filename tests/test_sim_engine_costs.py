"""Engine costs on the simulated GPU: host time per step and per sequence, the front-end offset,
the engine's SM scaling and interference, decode borrowing, and the engine's sequence cap."""

from __future__ import annotations

import math

import pytest

from semipd.perf.profile import ProfilePerfModel, profile_from_model
from semipd.perf.registry import get_perf_model
from semipd.sim.engine_costs import DEFAULT_HOST_STEP_MS, EngineCosts, get_costs, perf_host_overhead_ms
from semipd.sim.engine_scaling import ENGINE_SM_SCALING, EngineScaledPerfModel, engine_scaled
from semipd.sim.runner import SimConfig, run_policy
from semipd.workload import WorkloadRequest

PERF = get_perf_model("llama-3.1-8b-h100")
ONE = [WorkloadRequest(0.0, 1000, 4)]


def test_costs_are_validated_and_presets_known() -> None:
    for field in ("host_step_ms", "host_per_seq_ms", "prefill_host_per_seq_ms", "frontend_ms"):
        with pytest.raises(ValueError, match=field):
            EngineCosts(**{field: -1.0})
        with pytest.raises(ValueError, match=field):
            EngineCosts(**{field: math.nan})
    with pytest.raises(ValueError, match="scale_to_engine"):
        EngineCosts(scale_to_engine=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown engine costs 'gpu'"):
        get_costs("gpu")
    assert get_costs("ideal") == EngineCosts()
    assert get_costs("http").with_overrides(frontend_ms=5.0, host_per_seq_ms=None).frontend_ms == 5.0
    with pytest.raises(ValueError, match="costs"):
        SimConfig(costs="http")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_prefill_percentage"):
        SimConfig(min_prefill_percentage=90.0, max_prefill_percentage=80.0)


def test_host_overhead_comes_from_the_perf_model_when_it_has_one() -> None:
    assert perf_host_overhead_ms(PERF) == DEFAULT_HOST_STEP_MS
    profile = profile_from_model(PERF, name="p", sms=[16, 132], tokens=[128, 4096], batch=[1, 256],
                                 kv_tokens=[0, 100_000], splits=[(64, 68)],
                                 memory={"memory_bytes": 80 * 2**30, "weight_bytes": 16 * 2**30,
                                         "activation_reserve_bytes": 2**30, "kv_bytes_per_token": 131072})
    measured = ProfilePerfModel({**profile, "host_overhead_ms": {"prefill": 3.5, "decode": 3.5}})
    assert perf_host_overhead_ms(measured) == 0.0  # in the measured step times already
    assert EngineCosts(host_step_ms=None).host_step_s(measured) == 0.0
    assert EngineCosts(host_step_ms=1.0).host_step_s(measured) == pytest.approx(1e-3)
    with pytest.raises(ValueError, match="host_overhead_ms"):
        ProfilePerfModel({**profile, "host_overhead_ms": {"decode": -1}})
    assert engine_scaled(measured) is measured  # no engine figures for that name: left as it is


def test_engine_scaled_model_reproduces_the_engines_table() -> None:
    scaled = engine_scaled(PERF)
    assert isinstance(scaled, EngineScaledPerfModel) and engine_scaled(scaled) is scaled
    table = ENGINE_SM_SCALING[PERF.name]
    for sms, ms in table.prefill_ms:
        assert scaled.prefill_time([(2048, 2048)], sms) * 1e3 == pytest.approx(ms, rel=1e-9)
    for sms, ms in table.decode_ms:
        assert scaled.decode_time(64, 64 * 1024, sms) * 1e3 == pytest.approx(ms, rel=1e-9)
    assert scaled.interference(88, 44) == (pytest.approx((1.344 + 1.193) / 2), pytest.approx(1.335 - 0.004 * 0.5))
    # Tiling: 8192 tokens on 96 SMs run relatively faster than the smooth fit says (measured 211 vs 3.5x 60 ms).
    per_token_2048 = scaled.prefill_time([(2048, 2048)], 96) / 2048
    assert scaled.prefill_factor(96, 8192) < scaled.prefill_factor(96, 2048)
    assert scaled.prefill_time([(8192, 8192)], 96) / 8192 < 1.5 * per_token_2048
    assert scaled.kv_capacity_tokens() == PERF.kv_capacity_tokens()


def test_host_time_and_front_end_offset_on_the_unified_executor() -> None:
    base = run_policy(ONE, "unified", SimConfig()).requests[0]
    costs = EngineCosts(host_step_ms=5.0, host_per_seq_ms=1.0, frontend_ms=30.0)
    rec = run_policy(ONE, "unified", SimConfig(costs=costs)).requests[0]
    # First batch: 5 ms + 1 sequence x 1 ms of host work, then 30 ms of front end.
    assert rec.ttft_ms == pytest.approx(base.ttft_ms + 6.0 + 30.0)
    # Three decode steps, each 6 ms longer; the front end shifts first token and completion alike.
    assert rec.tpot_ms == pytest.approx(base.tpot_ms + 6.0)
    assert rec.completion - rec.first_token == pytest.approx(base.completion - base.first_token + 0.018)


def test_semipd_host_time_borrowing_and_itl() -> None:
    config = SimConfig(costs=EngineCosts(host_step_ms=2.0), decode_borrows_idle_prefill=False)
    plain = run_policy(ONE, "static:50/50", SimConfig(decode_borrows_idle_prefill=False), collect_itl=True)
    hosted = run_policy(ONE, "static:50/50", config)
    assert hosted.requests[0].ttft_ms == pytest.approx(plain.requests[0].ttft_ms + 2.0)
    assert hosted.requests[0].tpot_ms == pytest.approx(plain.requests[0].tpot_ms + 2.0)
    assert len(plain.itl_s) == 3 and sum(plain.itl_s) == pytest.approx(
        plain.requests[0].completion - plain.requests[0].first_token)
    # With prefill idle, decode borrows every SM: a batch-1 step on 132 SMs instead of 64.
    borrowed = run_policy(ONE, "static:50/50", SimConfig(decode_borrows_idle_prefill=True))
    assert borrowed.extra["decode_borrowed_steps"] == 3 and plain.extra["decode_borrowed_steps"] == 0
    expected = sum(PERF.decode_time(1, 1000 + k, 132) for k in (1, 2, 3)) / 3
    assert borrowed.requests[0].tpot_ms == pytest.approx(1e3 * expected)
    assert borrowed.requests[0].tpot_ms < plain.requests[0].tpot_ms


def test_busy_prefill_keeps_decode_on_its_share() -> None:
    # A long prompt arrives while the first request decodes: from then on decode stays on its partition.
    workload = [WorkloadRequest(0.0, 100, 400), WorkloadRequest(0.5, 8000, 2)]
    result = run_policy(workload, "static:50/50", SimConfig(decode_borrows_idle_prefill=True))
    assert 0 < result.extra["decode_borrowed_steps"] < result.extra["decode_steps"]


def test_prefill_takes_at_most_max_num_seqs_sequences() -> None:
    workload = [WorkloadRequest(0.0, 16, 2) for _ in range(12)]
    # The first arrival starts an iteration alone; the other 11 wait for it, then go 3 at a time (or all at once).
    capped = run_policy(workload, "static:50/50", SimConfig(max_decode_batch=3))
    assert capped.extra["prefill_iterations"] == 1 + 4
    assert run_policy(workload, "static:50/50", SimConfig()).extra["prefill_iterations"] == 2


def test_prefill_loses_time_per_decoding_sequence() -> None:
    workload = [WorkloadRequest(0.0, 100, 200), WorkloadRequest(0.0, 100, 200), WorkloadRequest(1.0, 500, 2)]
    base = run_policy(workload, "static:50/50", SimConfig()).requests[2]
    slowed = run_policy(workload, "static:50/50", SimConfig(costs=EngineCosts(prefill_host_per_seq_ms=10.0)))
    assert slowed.requests[2].ttft_ms == pytest.approx(base.ttft_ms + 2 * 10.0)  # two sequences decoding
