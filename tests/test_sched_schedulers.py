"""Prefill, decode and unified schedulers: chunking, budget, FCFS, hand-off, preemption, abort."""

from __future__ import annotations

import random

import pytest

from semipd.sched import (
    Batch,
    BlockAllocator,
    DecodeScheduler,
    DecodeSchedulerConfig,
    PrefillScheduler,
    PrefillSchedulerConfig,
    Request,
    RequestState,
    Scheduler,
    UnifiedScheduler,
    UnifiedSchedulerConfig,
)


def req(rid: str, prompt: int, max_tokens: int = 4) -> Request:
    return Request(rid=rid, num_prompt_tokens=prompt, max_tokens=max_tokens, arrival_time=0.0)


def semipd_pair(num_blocks: int, block_size: int = 4, budget: int = 64, max_batch: int = 8, watermark: int = 0,
                stop_checker=None):
    alloc = BlockAllocator(num_blocks, block_size, watermark)
    pre = PrefillScheduler(PrefillSchedulerConfig(max_prefill_tokens=budget), alloc, stop_checker)
    dec = DecodeScheduler(DecodeSchedulerConfig(max_decode_batch=max_batch), alloc, pre.add_preempted, stop_checker)
    return alloc, pre, dec


def run_semipd(pre: PrefillScheduler, dec: DecodeScheduler, max_iters: int = 100_000) -> int:
    """Alternate one prefill iteration and one decode step until both are idle."""
    for it in range(max_iters):
        if not (pre.has_work() or dec.has_work()):
            return it
        batch = pre.schedule()
        if not batch.is_empty:
            for r in pre.update(batch, None):
                dec.add_request(r)
        step = dec.schedule()
        bs = dec.allocator.block_size
        assert all(len(r.block_ids) * bs >= r.num_tokens for r in step.decodes), "a decode without KV room"
        if not step.is_empty:
            dec.update(step, None)
    raise AssertionError("schedulers did not drain")


def run_unified(sched: UnifiedScheduler, max_iters: int = 100_000) -> list[Batch]:
    batches = []
    for _ in range(max_iters):
        if not sched.has_work():
            return batches
        b = sched.schedule()
        batches.append(b)
        sched.update(b, None)
    raise AssertionError("scheduler did not drain")


def test_schedulers_satisfy_the_protocol():
    alloc, pre, dec = semipd_pair(16)
    uni = UnifiedScheduler(UnifiedSchedulerConfig(), alloc)
    for s in (pre, dec, uni):
        assert isinstance(s, Scheduler)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        PrefillSchedulerConfig(max_prefill_tokens=0)
    with pytest.raises(ValueError, match="max_decode_batch"):
        DecodeSchedulerConfig(max_decode_batch=-1)
    with pytest.raises(ValueError, match="max_num_seqs"):
        UnifiedSchedulerConfig(max_num_seqs=True)


def test_long_prompt_is_chunked_and_holds_its_blocks():
    alloc, pre, dec = semipd_pair(64, budget=32)
    r = req("a", 100)
    pre.add_request(r)
    sizes = []
    for _ in range(4):
        b = pre.schedule()
        (c,) = b.prefills
        sizes.append((c.start, c.num_tokens, c.is_last))
        assert len(r.block_ids) == alloc.blocks_needed(c.end)
        handed = pre.update(b, None)
        assert r.num_computed_tokens == c.end
    assert sizes == [(0, 32, False), (32, 32, False), (64, 32, False), (96, 4, True)]
    assert handed == [r] and r.state is RequestState.WAITING_DECODE and r.num_output_tokens == 1


def test_budget_and_fcfs_order():
    alloc, pre, dec = semipd_pair(256, budget=50)
    rs = [req(str(i), p) for i, p in enumerate([20, 20, 30, 5])]
    for r in rs:
        pre.add_request(r)
    b = pre.schedule()
    assert [(c.request.rid, c.num_tokens, c.is_last) for c in b.prefills] == [("0", 20, True), ("1", 20, True),
                                                                               ("2", 10, False)]
    assert b.num_prefill_tokens == 50
    pre.update(b, None)
    b = pre.schedule()  # the chunked request goes first, then the queue
    assert [(c.request.rid, c.num_tokens) for c in b.prefills] == [("2", 20), ("3", 5)]


def test_head_of_queue_is_never_skipped_and_watermark_is_kept():
    alloc, pre, dec = semipd_pair(14, block_size=4, budget=100, watermark=2)
    big, small = req("big", 40, max_tokens=2), req("small", 4)
    hog = req("hog", 12)
    pre.add_request(hog)
    pre.update(pre.schedule(), None)  # hog holds 3 blocks
    pre.add_request(big)
    pre.add_request(small)
    b = pre.schedule()
    # 11 free, watermark 2: big gets a 36-token chunk (9 blocks); small must wait behind it.
    assert [(c.request.rid, c.num_tokens) for c in b.prefills] == [("big", 36)]
    assert alloc.num_free == 2


def test_decode_preempts_the_newest_to_the_front_of_the_prefill_queue():
    alloc, pre, dec = semipd_pair(6, block_size=4)
    a, b, c, d = req("a", 4, 8), req("b", 4, 8), req("c", 8, 2), req("d", 4)
    pre.add_request(a)
    pre.add_request(b)
    for r in pre.update(pre.schedule(), None):
        dec.add_request(r)
    dec.update(dec.schedule(), None)  # a and b hold 2 blocks each (5 tokens after this step)
    pre.add_request(c)
    assert pre.update(pre.schedule(), None) == [c]  # c takes the last 2 blocks; its hand-off is pending
    pre.add_request(d)
    assert alloc.num_free == 0
    for _ in range(3):  # contexts of 6..8 tokens fit in the blocks held
        assert dec.update(dec.schedule(), None) == []
    step = dec.schedule()  # 9 tokens need a third block: b, the newest, is preempted
    assert step.decodes == [a] and b.state is RequestState.PREEMPTED and b.num_preemptions == 1
    assert not b.block_ids and b.num_computed_tokens == 0 and b.num_output_tokens == 5
    chunks = pre.schedule().prefills  # recompute 9 tokens; a took one of b's blocks, 1 is left
    assert [(ch.request.rid, ch.num_tokens, ch.is_last) for ch in chunks] == [("b", 4, False)]
    assert alloc.num_free == 0
    assert pre.num_waiting == 1  # d waits behind b


def test_first_token_can_finish_at_prefill():
    alloc, pre, dec = semipd_pair(16)
    r = req("one", 5, max_tokens=1)
    pre.add_request(r)
    assert pre.update(pre.schedule(), None) == []
    assert r.state is RequestState.FINISHED and r.finish_reason == "length" and alloc.num_free == 16


def test_stop_checker_and_token_ids():
    def stop_on_seven(request: Request, token: int | None) -> str | None:
        return "stop" if token == 7 else None

    alloc, pre, dec = semipd_pair(32, stop_checker=stop_on_seven)
    r = Request("s", 3, 10, 0.0, prompt_token_ids=[1, 2, 3])
    pre.add_request(r)
    handed = pre.update(pre.schedule(), [5])
    dec.add_request(handed[0])
    step = dec.schedule()
    assert dec.update(step, [6]) == []
    step = dec.schedule()
    assert dec.update(step, [7]) == [r]
    assert r.output_token_ids == [5, 6, 7] and r.finish_reason == "stop" and r.token_ids(2, 5) == [3, 5, 6]
    assert alloc.num_free == 32


def test_request_that_can_never_fit_is_refused():
    alloc, pre, dec = semipd_pair(4, block_size=4, watermark=1)
    with pytest.raises(ValueError, match="cannot fit"):
        pre.add_request(req("huge", 10, max_tokens=4))  # 13 slots = 4 blocks + watermark 1 > 4
    pre.add_request(req("ok", 8, max_tokens=5))


def test_decode_batch_cap_and_growth():
    alloc, pre, dec = semipd_pair(64, max_batch=2)
    rs = [req(str(i), 4, max_tokens=3) for i in range(3)]
    for r in rs:
        pre.add_request(r)
    for r in pre.update(pre.schedule(), None):
        dec.add_request(r)
    step = dec.schedule()
    assert step.decodes == rs[:2] and dec.num_waiting == 1
    assert dec.num_running_tokens == 10
    assert all(len(r.block_ids) * 4 >= r.num_tokens for r in step.decodes)
    dec.update(step, None)
    assert dec.num_running_tokens == 12
    step = dec.schedule()
    assert dec.update(step, None) == rs[:2]
    assert dec.schedule().decodes == [rs[2]]


@pytest.mark.parametrize("seed", range(4))
def test_semipd_preemption_under_a_tiny_pool_loses_nothing(seed):
    rng = random.Random(seed)
    alloc, pre, dec = semipd_pair(24, block_size=4, budget=32, max_batch=16, watermark=1)
    rs = [req(str(i), rng.randint(1, 40), rng.randint(1, 40)) for i in range(40)]
    for r in rs:
        pre.add_request(r)
    run_semipd(pre, dec)
    assert all(r.state is RequestState.FINISHED for r in rs)
    assert [r.num_output_tokens for r in rs] == [r.max_tokens for r in rs]
    assert sum(r.num_preemptions for r in rs) > 0
    assert alloc.num_free == alloc.num_blocks
    alloc.check_consistency()


def test_abort_frees_blocks_everywhere():
    alloc, pre, dec = semipd_pair(64, budget=8)
    waiting, partial, inbox, running = req("w", 4), req("p", 20), req("i", 4), req("r", 4)
    pre.add_request(running)
    dec.add_request(pre.update(pre.schedule(), None)[0])
    dec.schedule()
    pre.add_request(inbox)
    dec.add_request(pre.update(pre.schedule(), None)[0])
    pre.add_request(partial)
    in_flight = pre.schedule()
    pre.add_request(waiting)
    assert partial.block_ids
    for sched, r in ((pre, waiting), (pre, partial), (dec, inbox), (dec, running)):
        assert sched.abort(r.rid) is r and r.state is RequestState.ABORTED and not r.block_ids
    assert pre.update(in_flight, None) == []  # the aborted chunk is skipped
    assert not pre.has_work() and not dec.has_work() and alloc.num_free == 64


def test_unified_is_decode_first_with_chunked_prefill():
    alloc = BlockAllocator(256, 4)
    u = UnifiedScheduler(UnifiedSchedulerConfig(max_num_batched_tokens=16, max_num_seqs=4), alloc)
    a, b = req("a", 6, max_tokens=5), req("b", 30, max_tokens=2)
    u.add_request(a)
    u.add_request(b)
    b1 = u.schedule()
    assert [(c.request.rid, c.num_tokens) for c in b1.prefills] == [("a", 6), ("b", 10)] and not b1.decodes
    u.update(b1, None)
    b2 = u.schedule()
    assert b2.decodes == [a] and [(c.request.rid, c.num_tokens) for c in b2.prefills] == [("b", 15)]
    assert b2.num_tokens == 16
    u.update(b2, None)
    b3 = u.schedule()
    assert b3.decodes == [a] and [(c.request.rid, c.num_tokens, c.is_last) for c in b3.prefills] == [("b", 5, True)]
    run_unified(u)
    assert a.num_output_tokens == 5 and b.num_output_tokens == 2 and alloc.num_free == 256


def test_unified_respects_max_num_seqs():
    alloc = BlockAllocator(256, 4)
    u = UnifiedScheduler(UnifiedSchedulerConfig(max_num_batched_tokens=100, max_num_seqs=2), alloc)
    for i in range(3):
        u.add_request(req(str(i), 4))
    assert len(u.schedule().prefills) == 2 and u.num_waiting == 1


@pytest.mark.parametrize("seed", range(4))
def test_unified_preemption_under_a_tiny_pool_loses_nothing(seed):
    rng = random.Random(seed)
    alloc = BlockAllocator(24, 4, watermark=1)
    u = UnifiedScheduler(UnifiedSchedulerConfig(max_num_batched_tokens=32, max_num_seqs=16), alloc)
    rs = [req(str(i), rng.randint(1, 40), rng.randint(1, 40)) for i in range(40)]
    for r in rs:
        u.add_request(r)
    batches = run_unified(u)
    assert all(b.num_tokens <= 32 for b in batches)
    assert all(r.state is RequestState.FINISHED and r.num_output_tokens == r.max_tokens for r in rs)
    assert sum(r.num_preemptions for r in rs) > 0
    assert alloc.num_free == alloc.num_blocks


def test_unified_abort():
    alloc = BlockAllocator(64, 4)
    u = UnifiedScheduler(UnifiedSchedulerConfig(max_num_batched_tokens=8), alloc)
    a, b, c = req("a", 4, 10), req("b", 20), req("c", 4)
    for r in (a, b, c):
        u.add_request(r)
    u.update(u.schedule(), None)
    u.schedule()
    for r in (a, b, c):
        assert u.abort(r.rid) is r and not r.block_ids
    assert not u.has_work() and alloc.num_free == 64
