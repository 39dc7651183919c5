"""integrate_semi_pd_metrics_with_scheduler on small schedulers shaped like the seed's."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from semipd.clock import VirtualClock
from semipd.metrics import InstanceRole, SemiPDMetricsCollector, integrate_semi_pd_metrics_with_scheduler
from semipd.sched.batch import Batch, PrefillChunk
from semipd.sched.request import Request


@dataclass
class SglReq:
    """SGLang-like request: rid, origin_input_ids, output_ids."""

    rid: str
    origin_input_ids: list[int]
    output_ids: list[int] = field(default_factory=list)

    def is_first_token(self) -> bool:
        return len(self.output_ids) == 1


@dataclass
class SglBatch:
    reqs: list[SglReq]


class Scheduler:
    """The seed's 1.4 example without SGLang: hooks around a fake run_batch."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.waiting: list[SglReq] = []

    def handle_generate_request(self, req: SglReq) -> None:
        self.semi_pd_on_request_arrival(req)
        self.waiting.append(req)

    def run_batch(self, batch: SglBatch) -> None:
        self.semi_pd_on_batch_prefill_start(batch)
        self.clock.advance(0.2)
        for req in batch.reqs:
            req.output_ids.append(1)
        self.semi_pd_on_batch_prefill_end(batch)
        for req in batch.reqs:
            if req.is_first_token():
                self.semi_pd_on_first_token_generated(req)


def test_unified_scheduler_records_the_whole_lifecycle() -> None:
    clock = VirtualClock()
    sched = Scheduler(clock)
    collector = integrate_semi_pd_metrics_with_scheduler(
        sched, InstanceRole.UNIFIED, SemiPDMetricsCollector(clock=clock))
    assert sched.semi_pd_metrics_collector is collector and sched.semi_pd_instance_role is InstanceRole.UNIFIED
    reqs = [SglReq(f"r{i}", list(range(10 + i))) for i in range(3)]
    for r in reqs:
        sched.handle_generate_request(r)
    clock.advance(0.1)
    sched.run_batch(SglBatch(reqs))
    for r in reqs:
        sched.semi_pd_on_decode_start(r)
    for _ in range(3):
        clock.advance(0.05)
        for r in reqs:
            r.output_ids.append(2)
            sched.semi_pd_on_token_generated(r)
    sched.semi_pd_on_request_finished(reqs[0])  # output length from the request: 4
    sched.semi_pd_on_request_finished(reqs[1], 4, False)
    sched.semi_pd_on_request_aborted(reqs[2])
    rec = collector.get_request("r0")
    assert rec.input_length == 10 and rec.output_length == 4
    assert rec.ttft_ms == pytest.approx(300.0) and rec.queue_time_ms == pytest.approx(100.0)
    assert rec.prefill_time_ms == pytest.approx(200.0) and rec.tpot_ms == pytest.approx(50.0)
    agg = collector.get_current_window_metrics()
    assert (agg.num_completed, agg.num_failed, agg.num_aborted, agg.num_in_flight) == (1, 1, 1, 0)
    stats = collector.get_stats()
    assert stats["unknown_request_events"] == 0 and stats["out_of_order_events"] == 0


def test_prefill_role_hands_off_and_decode_role_registers_arrivals() -> None:
    clock = VirtualClock()
    prefill = Scheduler(clock)
    p_col = integrate_semi_pd_metrics_with_scheduler(prefill, InstanceRole.PREFILL,
                                                     SemiPDMetricsCollector(clock=clock))
    decode = object.__new__(Scheduler)
    d_col = integrate_semi_pd_metrics_with_scheduler(decode, InstanceRole.DECODE,
                                                     SemiPDMetricsCollector(clock=clock))
    req = SglReq("a", [1, 2, 3])
    prefill.handle_generate_request(req)
    prefill.run_batch(SglBatch([req]))
    assert not p_col.is_in_flight("a") and p_col.get_request("a").handed_off
    decode.semi_pd_on_decode_start(req)
    assert d_col.is_in_flight("a") and d_col.get_request("a").input_length == 3
    decode.semi_pd_on_request_finished(req, 1, True)
    assert d_col.get_stats()["num_completed_total"] == 1
    assert p_col.get_stats()["out_of_order_events"] == 0


def test_project_batch_and_request_shapes() -> None:
    clock = VirtualClock()
    sched = type("Bare", (), {})()
    col = integrate_semi_pd_metrics_with_scheduler(sched, InstanceRole.UNIFIED, SemiPDMetricsCollector(clock=clock))
    req = Request(rid="q", num_prompt_tokens=8, max_tokens=4, arrival_time=0.0)
    sched.semi_pd_on_request_arrival(req)
    first = Batch(prefills=[PrefillChunk(req, 0, 4, is_last=False)])
    last = Batch(prefills=[PrefillChunk(req, 4, 4, is_last=True)])
    sched.semi_pd_on_batch_prefill_start(first)
    clock.advance(1.0)
    sched.semi_pd_on_batch_prefill_end(first)  # not the last chunk: no prefill end yet
    assert col.get_request("q").prefill_end_time is None
    sched.semi_pd_on_batch_prefill_start(last)  # a later chunk: first start kept
    clock.advance(1.0)
    sched.semi_pd_on_batch_prefill_end(last)
    rec = col.get_request("q")
    assert rec.input_length == 8 and rec.prefill_start_time == 0.0 and rec.prefill_end_time == 2.0
    sched.semi_pd_on_batch_prefill_start([req])  # a plain iterable batch
    assert col.get_stats()["repeated_events"] == 2


def test_request_id_alternatives_and_bad_shapes() -> None:
    clock = VirtualClock()
    sched = type("Bare", (), {})()
    col = integrate_semi_pd_metrics_with_scheduler(sched, InstanceRole.UNIFIED, SemiPDMetricsCollector(clock=clock))
    alt = type("Alt", (), {"request_id": 42, "num_prompt_tokens": 5})()
    sched.semi_pd_on_request_arrival(alt)
    assert col.get_request("42").input_length == 5
    with pytest.raises(TypeError, match="request id"):
        sched.semi_pd_on_request_arrival(object())
    with pytest.raises(TypeError, match="requests"):
        sched.semi_pd_on_batch_prefill_start(object())
    with pytest.raises(ValueError, match="role"):
        integrate_semi_pd_metrics_with_scheduler(sched, "prefill")


def test_default_collector_is_created() -> None:
    sched = type("Bare", (), {})()
    col = integrate_semi_pd_metrics_with_scheduler(sched, InstanceRole.PREFILL)
    assert isinstance(col, SemiPDMetricsCollector) and col.window_size_seconds == 30.0
