"""BlockAllocator: ownership, watermark, growth, frees, thread-safety."""

from __future__ import annotations

import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from semipd.sched import BlockAllocator, Request


def req(rid: str, prompt: int = 10, max_tokens: int = 5) -> Request:
    return Request(rid=rid, num_prompt_tokens=prompt, max_tokens=max_tokens, arrival_time=0.0)


def test_validates_arguments():
    with pytest.raises(ValueError, match="num_blocks"):
        BlockAllocator(0, 16)
    with pytest.raises(ValueError, match="block_size"):
        BlockAllocator(4, 0)
    with pytest.raises(ValueError, match="watermark"):
        BlockAllocator(4, 16, watermark=4)


def test_blocks_needed_and_allocate_is_all_or_nothing():
    a = BlockAllocator(4, 16)
    assert [a.blocks_needed(n) for n in (0, 1, 16, 17, 64)] == [0, 1, 1, 2, 4]
    r = req("a", prompt=40)
    assert a.allocate(r, 40) and len(r.block_ids) == 3 and a.num_free == 1
    r2 = req("b")
    assert not a.allocate(r2, 17)
    assert r2.block_ids == [] and a.num_free == 1
    assert a.allocate(r, 48) and len(r.block_ids) == 3  # already covered
    assert a.usage == pytest.approx(0.75)


def test_watermark_limits_admission_not_growth():
    a = BlockAllocator(4, 4, watermark=1)
    r = req("a", prompt=12)
    assert not a.can_allocate(r, 16)
    assert not a.allocate(r, 16)  # would leave 0 < watermark free
    assert a.allocate(r, 12) and a.num_free == 1
    r.append_token(None)  # 13 tokens: the decode step needs a fourth block
    assert a.append_slot(r) and a.num_free == 0  # growth may use the reserve
    assert a.allocate(r, 16, use_watermark=False)


def test_append_slot_takes_a_block_only_at_a_boundary():
    a = BlockAllocator(3, 4)
    r = req("a", prompt=3)
    a.allocate(r, 3)
    assert a.append_slot(r) and len(r.block_ids) == 1  # 3 slots needed, 4 held
    for _ in range(2):
        r.append_token(None)
    assert a.append_slot(r) and len(r.block_ids) == 2  # 5 slots needed


def test_double_free_and_foreign_blocks_raise():
    a = BlockAllocator(4, 16)
    r = req("a")
    a.allocate(r, 20)
    held = list(r.block_ids)
    assert a.free(r) == 2 and r.block_ids == [] and a.num_free == 4
    r.block_ids = held
    with pytest.raises(RuntimeError, match="does not own"):
        a.free(r)
    other = req("b")
    a.allocate(other, 16)
    thief = req("c")
    thief.block_ids = list(other.block_ids)
    with pytest.raises(RuntimeError, match="does not own"):
        a.free(thief)
    thief.block_ids = [99]
    with pytest.raises(RuntimeError, match="does not own"):
        a.free(thief)
    a.check_consistency()
    assert a.num_free == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["alloc", "grow", "free"]), st.integers(0, 5), st.integers(1, 40)),
                max_size=80))
def test_no_block_is_ever_held_twice(ops):
    a = BlockAllocator(12, 4, watermark=1)
    reqs = [req(str(i), prompt=1) for i in range(6)]
    for op, i, n in ops:
        r = reqs[i]
        if op == "alloc":
            free_before = a.num_free
            missing = a.blocks_needed(n) - len(r.block_ids)
            ok = a.allocate(r, n)
            assert ok == (missing <= 0 or free_before - missing >= a.watermark)
            if ok:
                assert len(r.block_ids) >= a.blocks_needed(n)
        elif op == "grow":
            r.append_token(None)
            a.append_slot(r)
        else:
            a.free(r)
        held = [b for x in reqs for b in x.block_ids]
        assert len(held) == len(set(held))
        assert len(held) + a.num_free == a.num_blocks
        a.check_consistency()
    for r in reqs:
        a.free(r)
    assert a.num_free == a.num_blocks


def test_concurrent_allocate_and_free_keep_the_pool_whole():
    a = BlockAllocator(64, 4)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            mine = [req(f"{k}-{i}", prompt=1) for i in range(8)]
            for step in range(1500):
                r = mine[step % 8]
                if step % 3 == 2:
                    a.free(r)
                else:
                    a.allocate(r, 4 * (1 + step % 3), use_watermark=False)
            for r in mine:
                a.free(r)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often to interleave the workers
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors
    a.check_consistency()
    assert a.num_free == 64
