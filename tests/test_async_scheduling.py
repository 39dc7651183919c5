"""Overlapped scheduling (the unified engine launches step N+1 before reading step N's tokens):
token streams equal one-step-at-a-time scheduling under stop tokens, max_tokens, seeded sampling,
chunked prefill, preemptions and aborts; no token after a request finished; every KV block comes
back. And the scheduler's advance / resolve on hand-made cases."""

from __future__ import annotations

import random
import time

import pytest
from test_model_helpers import random_prompt

from semipd.engine import EngineConfig, SamplingParams
from semipd.engine.engine import Engine
from semipd.sched import BlockAllocator, Request, UnifiedScheduler, UnifiedSchedulerConfig
from semipd.sched.request import PENDING_TOKEN, RequestState


def make(async_scheduling: bool, **kw) -> Engine:
    cfg = dict(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256, max_num_seqs=8,
               max_num_batched_tokens=40)
    cfg.update(kw)
    return Engine(EngineConfig(async_scheduling=async_scheduling, **cfg))


def drive(engine: Engine, arrivals: dict[int, list[tuple[str, list[int], SamplingParams]]],
          aborts: dict[str, int] | None = None, max_steps: int = 2000) -> dict[str, list[int]]:
    """Step the engine, adding `arrivals[step]` before that step and aborting a request once it has
    streamed `aborts[rid]` tokens; the tokens each request streamed. Checks the stream invariants."""
    tokens: dict[str, list[int]] = {}
    finished: set[str] = set()
    aborts = dict(aborts or {})
    step = 0
    while step < max_steps and (engine.has_unfinished() or any(s >= step for s in arrivals)):
        for rid, prompt, params in arrivals.get(step, []):
            engine.add_request(rid, prompt, params)
        for delta in engine.step():
            assert delta.rid not in finished, f"a token after {delta.rid} finished"
            tokens.setdefault(delta.rid, []).extend(delta.new_token_ids)
            assert len(tokens[delta.rid]) == delta.num_output_tokens
            if delta.finished:
                finished.add(delta.rid)
            if delta.rid in aborts and len(tokens[delta.rid]) >= aborts[delta.rid] and not delta.finished:
                engine.abort(delta.rid)
                del aborts[delta.rid]
        step += 1
    assert not engine.has_unfinished(), "stalled"
    assert engine.allocator.num_free == engine.allocator.num_blocks
    engine.allocator.check_consistency()
    return tokens


def workload(seed: int, n: int = 14) -> tuple[dict[int, list], dict[str, list[int]]]:
    rng = random.Random(seed)
    arrivals: dict[int, list] = {}
    prompts = {}
    for i in range(n):
        prompt = random_prompt(rng.randint(3, 70), seed=seed * 100 + i)
        greedy = rng.random() < 0.5
        params = SamplingParams(max_tokens=rng.randint(1, 24), ignore_eos=True,
                                temperature=0.0 if greedy else 0.8, top_k=-1 if greedy else 50, seed=i,
                                stop_token_ids=rng.sample(range(512), 12))
        arrivals.setdefault(rng.randint(0, 20), []).append((f"r{i}", prompt, params))
        prompts[f"r{i}"] = prompt
    return arrivals, prompts


@pytest.mark.parametrize("seed", [0, 1])
def test_overlapped_streams_equal_one_step_at_a_time(seed: int) -> None:
    arrivals, _ = workload(seed)
    ref = drive(make(False), arrivals)
    got = drive(make(True), arrivals)
    assert got == ref
    assert any(len(t) < 24 for t in ref.values())  # some stopped on a stop token or at max_tokens


def test_overlapped_scheduling_survives_preemption_under_a_tiny_kv_pool() -> None:
    arrivals, _ = workload(3, n=10)
    ref = drive(make(False, num_kv_blocks=14), arrivals)
    engine = make(True, num_kv_blocks=14)
    got = drive(engine, arrivals)
    assert got == ref and engine.num_preemptions > 0


def test_aborts_mid_flight_stop_the_stream_and_free_blocks() -> None:
    arrivals, _ = workload(5, n=8)
    ref = drive(make(False), arrivals)
    long = [rid for rid, t in ref.items() if len(t) >= 6][:3]
    got = drive(make(True), arrivals, aborts={rid: 3 for rid in long})
    for rid, t in ref.items():
        if rid in long:
            assert got[rid] == t[:len(got[rid])] and 3 <= len(got[rid]) < len(t)
        else:
            assert got[rid] == t


def _scheduler() -> tuple[UnifiedScheduler, BlockAllocator]:
    allocator = BlockAllocator(64, 4)
    stop = {99}
    return UnifiedScheduler(UnifiedSchedulerConfig(64, 8), allocator,
                            stop_checker=lambda r, t: "stop" if t in stop else None), allocator


def test_a_request_that_stops_while_scheduled_again_gets_no_later_token() -> None:
    sched, allocator = _scheduler()
    r = Request("a", 3, 10, 0.0, prompt_token_ids=[1, 2, 3])
    sched.add_request(r)
    b0 = sched.schedule()
    a0 = sched.advance(b0)  # prefill launched; its first token is pending
    assert r.output_token_ids == [PENDING_TOKEN] and r.state is RequestState.WAITING_DECODE
    b1 = sched.schedule()  # the decode of the pending token is scheduled before the token is known
    assert b1.decodes == [r]
    assert sched.resolve(a0, [99]) == [r]  # the first token is a stop token
    assert r.is_finished and r.finish_reason == "stop" and r.output_token_ids == [99]
    a1 = sched.advance(b1)
    assert a1.slots == [(r, -1)] and sched.resolve(a1, [7]) == []
    assert r.output_token_ids == [99] and allocator.num_free == allocator.num_blocks


def test_max_tokens_finish_at_advance_and_a_stop_token_still_wins() -> None:
    sched, allocator = _scheduler()
    r = Request("b", 2, 2, 0.0, prompt_token_ids=[1, 2])
    sched.add_request(r)
    sched.resolve(sched.advance(sched.schedule()), [5])
    b1 = sched.schedule()
    a1 = sched.advance(b1)  # the second token reaches max_tokens: finished now, blocks freed
    assert r.is_finished and r.finish_reason == "length" and allocator.num_free == allocator.num_blocks
    assert sched.schedule().is_empty
    assert sched.resolve(a1, [99]) == [r] and r.finish_reason == "stop" and r.output_token_ids == [5, 99]


def test_preemption_drops_the_pending_token() -> None:
    r = Request("c", 2, 8, 0.0, prompt_token_ids=[1, 2])
    r.append_token(4)
    r.append_token(PENDING_TOKEN)
    r.drop_pending_tokens()
    assert r.output_token_ids == [4] and r.num_output_tokens == 1


def test_fenced_blocks_wait_for_their_release() -> None:
    allocator = BlockAllocator(8, 4)
    a, b = Request("a", 8, 4, 0.0), Request("b", 8, 4, 0.0)
    assert allocator.allocate(a, 8) and allocator.allocate(b, 8)
    assert allocator.free(a, fence=3) == 2 and allocator.num_free == 4 and allocator.num_fenced == 2
    allocator.check_consistency()
    assert allocator.release(2) == 0 and allocator.num_free == 4
    assert allocator.release(3) == 2 and allocator.num_free == 6 and allocator.num_fenced == 0
    allocator.free(b)
    allocator.check_consistency()
    assert allocator.num_free == 8


def test_semipd_decode_overlap_with_stops_preemptions_and_repartitions_equals_unified() -> None:
    from semipd.engine.semi_pd.config import SemiPDConfig
    from semipd.engine.semi_pd.engine import SemiPDEngine

    arrivals, _ = workload(7, n=12)
    ref = drive(make(False, num_kv_blocks=40), arrivals)
    engine = SemiPDEngine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=40,
                                       max_num_seqs=8, max_num_batched_tokens=40, mode="semi-pd",
                                       semipd=SemiPDConfig(controller="static")))
    try:
        assert engine.decode_worker.overlap
        pm = engine.partitions
        choices = pm.reachable_prefill_sms
        original = pm.begin_launch
        count = iter(range(10**9))

        def begin_launch(phase: str):  # a new split every 3 launch stretches
            n = next(count)
            if n % 3 == 0:
                pm.request_sm_reallocation(pm.grid.allocation(choices[(n // 3) % len(choices)]))
            return original(phase)

        pm.begin_launch = begin_launch
        tokens: dict[str, list[int]] = {}
        for batch in arrivals.values():
            for rid, prompt, params in batch:
                engine.add_request(rid, prompt, params)
        deadline = time.monotonic() + 60
        while engine.has_unfinished():
            assert time.monotonic() < deadline, engine.get_status()
            for d in engine.step():
                tokens.setdefault(d.rid, []).extend(d.new_token_ids)
        assert tokens == ref
        deadline = time.monotonic() + 10
        while engine.allocator.num_free != engine.allocator.num_blocks:
            assert time.monotonic() < deadline, "blocks never came back"
            time.sleep(0.01)
        assert engine.allocator.num_fenced == 0
        engine.allocator.check_consistency()
    finally:
        engine.stop()
