"""SimulatedResourceManager: validation, switch timing at phase boundaries, status."""

from __future__ import annotations

import pytest

from semipd.allocation import ResourceManager, SMAllocation, SMGrid
from semipd.clock import VirtualClock
from semipd.sim.resource_manager import SimulatedResourceManager

GRID = SMGrid(132, 8, 8)


def manager(delay: float = 0.0, prefill_sms: int = 64) -> tuple[SimulatedResourceManager, VirtualClock]:
    clock = VirtualClock()
    return SimulatedResourceManager(GRID, GRID.allocation(prefill_sms), clock, delay), clock


def test_is_a_resource_manager_and_reports_status():
    rm, _ = manager()
    assert isinstance(rm, ResourceManager)
    rm.start()
    st = rm.get_status()
    assert st["current_sm_allocation"] == GRID.allocation(64).as_dict()
    assert st["sm_grid"] == GRID.as_dict() and st["prefill_sms"] == 64 and st["decode_sms"] == 68
    assert st["running"] and st["switch_pending_for"] == []


def test_rejects_off_grid_splits_and_bad_delay():
    rm, _ = manager()
    with pytest.raises(ValueError, match="not realisable"):
        rm.request_sm_reallocation(SMAllocation(50, 50))
    with pytest.raises(ValueError, match="switch_delay_s"):
        SimulatedResourceManager(GRID, GRID.allocation(64), VirtualClock(), -1.0)
    assert rm.num_reallocations == 0


def test_switch_takes_effect_per_phase_at_its_boundary_after_the_delay():
    rm, clock = manager(delay=2.0)
    assert rm.request_sm_reallocation(GRID.allocation(96))
    assert rm.get_status()["current_sm_allocation"] == GRID.allocation(96).as_dict()  # the target
    assert rm.pending_due_time() == 2.0
    clock.set(1.0)
    assert rm.phase_sms("prefill") == 64  # not due yet
    clock.set(2.5)
    assert rm.phase_sms("prefill") == 96  # prefill's boundary after the delay
    assert rm.current_sms("decode") == 68 and rm.get_status()["switch_pending_for"] == ["decode"]
    clock.set(3.0)
    assert rm.phase_sms("decode") == 36
    assert rm.pending_due_time() is None and rm.switch_latencies == [3.0]
    assert rm.num_reallocations == 1 and [str(a) for _, a in rm.history] == [str(GRID.allocation(64)),
                                                                             str(GRID.allocation(96))]


def test_same_target_is_a_no_op_and_a_new_request_replaces_a_pending_one():
    rm, clock = manager(delay=1.0)
    assert rm.request_sm_reallocation(GRID.allocation(64))
    assert rm.num_reallocations == 0 and rm.pending_due_time() is None
    rm.request_sm_reallocation(GRID.allocation(96))
    clock.set(0.5)
    rm.request_sm_reallocation(GRID.allocation(32))
    assert rm.pending_due_time() == 1.5 and rm.num_reallocations == 2
    clock.set(1.5)
    assert rm.phase_sms("prefill") == 32 and rm.phase_sms("decode") == 100
