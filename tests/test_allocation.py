import pytest

from semipd.allocation import InMemoryResourceManager, ResourceManager, SMAllocation, SMGrid
from semipd.clock import VirtualClock


def test_sm_allocation_validates_and_names_field():
    with pytest.raises(ValueError, match="prefill_percentage"):
        SMAllocation(0, 50)
    with pytest.raises(ValueError, match="decode_percentage"):
        SMAllocation(50, 101)
    with pytest.raises(ValueError, match="<= 100"):
        SMAllocation(70, 40)
    assert SMAllocation(70, 30).as_dict() == {"prefill_percentage": 70, "decode_percentage": 30}


def test_grid_hopper_granularity():
    g = SMGrid(total_sms=132, granularity=8, min_sms=8)
    choices = g.prefill_sm_choices()
    assert choices[0] == 8 and choices[-1] == 120 and all(c % 8 == 0 for c in choices)
    alloc = g.allocation(64)
    assert g.prefill_sms(alloc) == 64
    with pytest.raises(ValueError, match="not realisable"):
        g.prefill_sms(SMAllocation(50, 50))  # 66 SMs is not a multiple of 8
    assert g.prefill_sms(g.nearest(SMAllocation(50, 50))) == 64


def test_in_memory_manager_applies_and_reports():
    m = InMemoryResourceManager(SMAllocation(70, 30))
    assert isinstance(m, ResourceManager)
    m.start()
    assert m.request_sm_reallocation(SMAllocation(40, 60))
    st = m.get_status()
    assert st["current_sm_allocation"] == {"prefill_percentage": 40, "decode_percentage": 60}
    assert st["num_reallocations"] == 1


def test_virtual_clock_never_goes_back():
    c = VirtualClock()
    c.advance(1.5)
    assert c.now() == 1.5
    with pytest.raises(ValueError):
        c.set(1.0)
