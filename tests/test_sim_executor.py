"""Executors' timing semantics against the performance model: iteration times, interference
applied only while the other phase is busy, the prefill -> decode hand-off, SM switches."""

from __future__ import annotations

import pytest

from semipd.allocation import SMGrid
from semipd.clock import VirtualClock
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.perf.registry import get_perf_model
from semipd.sched import (
    BlockAllocator,
    DecodeScheduler,
    DecodeSchedulerConfig,
    PrefillScheduler,
    PrefillSchedulerConfig,
    UnifiedScheduler,
    UnifiedSchedulerConfig,
)
from semipd.sim.resource_manager import SimulatedResourceManager
from semipd.sim.semipd_executor import SemiPDExecutor
from semipd.sim.unified_executor import UnifiedExecutor
from semipd.workload import WorkloadRequest

PERF = get_perf_model("llama-3.1-8b-h100")
GRID = SMGrid(132, 8, 8)


def semipd(workload, prefill_sms=64, delay=0.0, on_tick=None, borrow=False):
    clock = VirtualClock()
    collector = SemiPDMetricsCollector(30.0, clock=clock)
    alloc = BlockAllocator(20_000, 16)
    pre = PrefillScheduler(PrefillSchedulerConfig(), alloc)
    dec = DecodeScheduler(DecodeSchedulerConfig(), alloc, pre.add_preempted)
    rm = SimulatedResourceManager(GRID, GRID.allocation(prefill_sms), clock, delay)
    ex = SemiPDExecutor(workload, clock, collector, 1.0, PERF, pre, dec, rm, decode_borrow=borrow)
    if on_tick is not None:
        ex.on_tick = lambda t: on_tick(ex, t)
    ex.run()
    assert alloc.num_free == alloc.num_blocks
    return ex, collector


def test_single_request_follows_the_perf_model_exactly():
    ex, col = semipd([WorkloadRequest(0.5, 1000, 4)])
    (rec,) = ex.records()
    ttft = PERF.prefill_time([(1000, 1000)], 64)
    assert rec.first_token == pytest.approx(0.5 + ttft, rel=1e-12)
    steps = sum(PERF.decode_time(1, 1000 + k, 68) for k in (1, 2, 3))
    assert rec.completion == pytest.approx(rec.first_token + steps, rel=1e-12)
    assert rec.tpot_ms == pytest.approx(1000 * steps / 3) and rec.output_len == 4 and rec.finished
    m = col.get_request("0")
    assert m.prefill_start_time == 0.5 and m.first_token_time == m.prefill_end_time == m.decode_start_time
    assert ex.stats()["decode_steps"] == 3 and ex.stats()["prefill_iterations"] == 1


def test_decode_borrows_the_whole_gpu_while_prefill_is_idle():
    """As the engine's decode worker does: a step that starts with prefill idle and nothing queued runs
    on all 132 SMs; once prefill has work, steps are back on decode's own SMs."""
    ex, _ = semipd([WorkloadRequest(0.5, 1000, 4)], prefill_sms=112, borrow=True)
    (rec,) = ex.records()
    steps = sum(PERF.decode_time(1, 1000 + k, 132) for k in (1, 2, 3))
    assert rec.completion == pytest.approx(rec.first_token + steps, rel=1e-12)
    assert ex.stats()["decode_borrowed_steps"] == 3
    busy, _ = semipd([WorkloadRequest(0.0, 100, 200), WorkloadRequest(0.2, 8000, 2)], prefill_sms=112, borrow=True)
    assert 0 < busy.stats()["decode_borrowed_steps"] < busy.stats()["decode_steps"]  # not while B's prefill ran


def test_prefill_is_slowed_while_decode_runs():
    # A decodes for a long time; B's whole prefill overlaps A's decode steps.
    ex, _ = semipd([WorkloadRequest(0.0, 100, 2000), WorkloadRequest(1.0, 4000, 2)])
    fp, _ = PERF.interference(64, 68)
    b = ex.records()[1]
    assert b.ttft_ms / 1000 == pytest.approx(PERF.prefill_time([(4000, 4000)], 64) * fp, rel=1e-9)


def test_interference_stops_when_decode_goes_idle_mid_iteration():
    # A finishes decoding while B's long prefill runs: B proceeds at 1/fp until then, at full speed after.
    ex, _ = semipd([WorkloadRequest(0.0, 100, 20), WorkloadRequest(0.05, 8000, 2)], prefill_sms=32)
    a, b = ex.records()
    fp, _ = PERF.interference(32, 100)
    work = PERF.prefill_time([(8000, 8000)], 32)
    assert 0.05 < a.completion < b.first_token  # A ended during B's prefill
    done_by_then = (a.completion - 0.05) / fp
    assert b.first_token == pytest.approx(a.completion + (work - done_by_then), rel=1e-9)


def test_hand_off_joins_decode_at_the_next_step_boundary():
    ex, col = semipd([WorkloadRequest(0.0, 100, 3000), WorkloadRequest(1.0, 200, 5)])
    b = col.get_request("1")
    step = PERF.decode_time(2, 2 * 3000, 68) * PERF.interference(64, 68)[1]
    assert b.first_token_time < b.decode_start_time < b.first_token_time + step


def test_lifecycle_order_for_every_request():
    wl = [WorkloadRequest(0.01 * i, 200 + 37 * i, 1 + (i * 7) % 50) for i in range(80)]
    ex, col = semipd(wl)
    for r in ex.records():
        m = col.get_request(r.rid)
        assert m.arrival_time <= m.prefill_start_time <= m.first_token_time == m.prefill_end_time
        if r.output_len > 1:
            assert m.first_token_time <= m.decode_start_time <= m.completion_time
        assert r.finished and r.output_len == wl[int(r.rid)].output_len


def test_switch_moves_each_phase_at_its_boundary_after_the_delay():
    def tick(ex, t):
        if t == 1.0:
            ex.rm.request_sm_reallocation(GRID.allocation(96))
            ex.note_reallocation()

    wl = [WorkloadRequest(0.1 * i, 2000, 200) for i in range(40)]
    ex, _ = semipd(wl, delay=0.5, on_tick=tick)
    assert ex.rm.num_reallocations == 1 and ex.p.sms == 96 and ex.d.sms == 36
    (latency,) = ex.rm.switch_latencies
    assert 0.5 <= latency < 0.5 + PERF.prefill_time([(8192, 8192)], 64) * 1.2


def test_unified_single_request_uses_mixed_batches():
    clock = VirtualClock()
    col = SemiPDMetricsCollector(30.0, clock=clock)
    alloc = BlockAllocator(10_000, 16)
    sched = UnifiedScheduler(UnifiedSchedulerConfig(), alloc)
    ex = UnifiedExecutor([WorkloadRequest(0.0, 1000, 3)], clock, col, 1.0, PERF, sched)
    ex.run()
    (rec,) = ex.records()
    assert rec.first_token == pytest.approx(PERF.mixed_time([(1000, 1000)], 0, 0), rel=1e-12)
    steps = PERF.mixed_time([], 1, 1001) + PERF.mixed_time([], 1, 1002)
    assert rec.completion == pytest.approx(rec.first_token + steps, rel=1e-12)
    assert col.get_request("0").decode_start_time == rec.first_token and alloc.num_free == 10_000
