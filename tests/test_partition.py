import threading

import pytest

from semipd.allocation import ResourceManager, SMAllocation, SMGrid
from semipd.clock import VirtualClock
from semipd.partition.green import PartitionManager, green_contexts_unavailable_reason

GRID = SMGrid(132, 8, 8)


def make(clock=None, reachable=None):
    m = PartitionManager(GRID, GRID.allocation(64), reachable_prefill_sms=reachable, clock=clock)
    m.start()
    return m


def test_protocol_and_status():
    m = make()
    assert isinstance(m, ResourceManager)
    st = m.get_status()
    assert st["backend"] == "none" and st["prefill_sms"] == 64 and st["decode_sms"] == 68
    assert st["sm_grid"] == GRID.as_dict()
    assert set(m.partitions()) == set(GRID.prefill_sm_choices())


def test_unrealisable_and_unreachable_split_raise():
    m = make(reachable=[32, 64, 96])
    with pytest.raises(ValueError, match="not realisable"):
        m.request_sm_reallocation(SMAllocation(50, 50))
    with pytest.raises(ValueError, match="not pre-created"):
        m.request_sm_reallocation(GRID.allocation(48))


def test_switch_is_acked_at_once_for_a_worker_that_is_not_launching():
    clock = VirtualClock()
    m = make(clock)
    assert m.begin_launch("prefill").prefill_sms == 64  # prefill is launching, decode is not
    assert m.request_sm_reallocation(GRID.allocation(96))
    assert m.get_status()["switch_pending_for"] == ["prefill"]
    clock.advance(0.003)
    m.end_launch("prefill")  # its next stretch goes to the new split: acked now
    st = m.get_status()
    assert st["switch_pending_for"] == [] and st["num_reallocations"] == 1
    assert st["switch_latency_ms"]["max"] == pytest.approx(3.0)
    assert st["ack_latency_ms"]["decode"]["max"] == pytest.approx(0.0)
    with m.launching("prefill") as part:
        assert (part.prefill_sms, part.decode_sms) == (96, 36)
    assert m.begin_launch("decode").decode_sms == 36


def test_a_launching_worker_gets_the_new_split_at_its_next_stretch():
    clock = VirtualClock()
    m = make(clock)
    with m.launching("decode") as part:
        assert part.decode_sms == 68
        m.request_sm_reallocation(GRID.allocation(32))
        clock.advance(0.001)
        assert m.get_status()["switch_pending_for"] == ["decode"]
        assert not m.wait_switched(timeout=0.01)
    assert m.get_status()["switch_pending_for"] == [] and m.wait_switched(timeout=0)
    with m.launching("decode") as part:
        assert part.decode_sms == 100
    assert m.get_status()["ack_latency_ms"]["decode"]["p50"] == pytest.approx(1.0)


def test_a_stretch_that_raises_still_ends():
    m = make()
    with pytest.raises(RuntimeError), m.launching("prefill"):
        raise RuntimeError("kernel failed")
    m.request_sm_reallocation(GRID.allocation(96))
    assert m.get_status()["switch_pending_for"] == []


def test_concurrent_workers_see_consistent_partitions():
    m = make()
    seen = {"prefill": set(), "decode": set()}
    stop = threading.Event()

    def worker(phase):
        while not stop.is_set():
            with m.launching(phase) as part:
                seen[phase].add(part.sms(phase))

    threads = [threading.Thread(target=worker, args=(ph,)) for ph in seen]
    for t in threads:
        t.start()
    for p in [32, 96, 64, 120]:
        m.request_sm_reallocation(GRID.allocation(p))
    stop.set()
    for t in threads:
        t.join()
    assert seen["prefill"] <= {32, 64, 96, 120}
    assert m.get_status()["switch_pending_for"] == []  # nobody launches any more: the last switch is done
    assert 1 <= m.get_status()["switch_latency_ms"]["count"] <= 4  # a switch superseded early is not counted
    assert m.begin_launch("prefill").prefill_sms == 120


def test_unavailable_reason_on_cpu():
    reason = green_contexts_unavailable_reason()
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:
        assert reason is not None


def test_listeners_see_every_request_and_failures_do_not_propagate():
    m = PartitionManager(GRID, GRID.allocation(64), reachable_prefill_sms=[32, 64], unavailable_reason="no GPU")
    m.start()
    seen = []

    def broken(alloc, accepted):
        raise RuntimeError("listener bug")

    m.add_listener(lambda alloc, accepted: seen.append((alloc, accepted)))
    m.add_listener(broken)
    assert m.request_sm_reallocation(GRID.allocation(32))
    with pytest.raises(ValueError):
        m.request_sm_reallocation(GRID.allocation(96))
    assert seen == [(GRID.allocation(32), True), (GRID.allocation(96), False)]
    st = m.get_status()
    assert st["num_reallocations"] == 1 and st["num_refused"] == 1
    assert st["unavailable_reason"] == "no GPU" and not st["sm_limited"]
    assert m.current_allocation() == GRID.allocation(32)


def test_reachable_splits_must_be_on_the_grid():
    with pytest.raises(ValueError, match="not splits"):
        PartitionManager(GRID, GRID.allocation(64), reachable_prefill_sms=[64, 65])
