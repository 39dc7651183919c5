"""ReversalMemory: moves stay between the splits that recently failed each SLO, under the same load."""

from __future__ import annotations

import pytest

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import SLOConstraints
from semipd.slo.observation import Observation
from semipd.slo.reversal_memory import ReversalMemory


def observe(prefill: float, rate: float = 10.0, prompt: float = 1000.0) -> Observation:
    metrics = AggregatedMetrics(window_end_time=30.0, request_arrival_rate=rate, arrival_input_token_rate=rate * prompt)
    return Observation.from_metrics(metrics, SMAllocation(prefill, 100 - prefill), SLOConstraints())


def test_moves_stay_between_the_failed_splits() -> None:
    memory = ReversalMemory(60.0)
    assert memory.update(0.0, observe(40), {"ttft": 1.5, "tpot": 0.5}, {"ttft": 1.5}) == (40, 100)
    assert memory.update(10.0, observe(80), {"ttft": 0.6, "tpot": 1.3}, {"tpot": 1.3}) == (40, 80)
    assert memory.update(20.0, observe(60), {"ttft": 0.9, "tpot": 0.9}, {}) == (40, 80)
    assert memory.update(100.0, observe(60), {"ttft": 0.9, "tpot": 0.9}, {}) == (0, 100)  # forgotten


def test_a_split_met_with_no_more_sms_than_when_it_failed_is_forgotten() -> None:
    memory = ReversalMemory(60.0)
    memory.update(0.0, observe(60), {"ttft": 1.5, "tpot": 0.5}, {"ttft": 1.5})
    assert memory.update(5.0, observe(50), {"ttft": 0.8, "tpot": 0.5}, {}) == (0, 100)


@pytest.mark.parametrize("load", [dict(rate=25.0), dict(prompt=300.0)], ids=["rate", "prompt-length"])
def test_a_split_that_failed_another_load_is_forgotten(load: dict[str, float]) -> None:
    """A prefill-heavy phase's TTFT failure at 78.8% says nothing about the decode-heavy phase after it:
    remembering it would keep decode from the SMs it now needs."""
    memory = ReversalMemory(60.0)
    memory.update(0.0, observe(78.8), {"ttft": 1.2, "tpot": 0.5}, {"ttft": 1.2})
    assert memory.update(10.0, observe(84.8), {"ttft": 0.1, "tpot": 1.1}, {}) == (78.8, 100)  # same load
    assert memory.update(20.0, observe(84.8, **load), {"ttft": 0.1, "tpot": 1.2}, {"tpot": 1.2}) == (0, 84.8)


def test_validation() -> None:
    with pytest.raises(ValueError, match="seconds"):
        ReversalMemory(-1.0)
    with pytest.raises(ValueError, match="load_ratio"):
        ReversalMemory(60.0, load_ratio=1.0)


def test_failed_splits_a_grid_step_apart_leave_no_range_so_the_older_is_forgotten() -> None:
    """TTFT failed at 78.8%, then TPOT at 84.8%, one 8-SM step (6.06%) apart: no split lies between, so
    a range would keep the controller at a split violating TPOT; the newer failure is kept."""
    memory = ReversalMemory(60.0)
    step = 100 * 8 / 132
    memory.update(0.0, observe(78.8), {"ttft": 1.2, "tpot": 0.5}, {"ttft": 1.2}, step)
    assert memory.update(10.0, observe(84.8), {"ttft": 0.8, "tpot": 1.5}, {"tpot": 1.5}, step) == (0, 84.8)
    wide = ReversalMemory(60.0)
    wide.update(0.0, observe(60.6), {"ttft": 1.2, "tpot": 0.5}, {"ttft": 1.2}, step)
    assert wide.update(10.0, observe(84.8), {"ttft": 0.8, "tpot": 1.5}, {"tpot": 1.5}, step) == (60.6, 84.8)


def test_a_split_past_a_failed_one_that_fails_both_slos_is_kept_and_the_way_back_opens() -> None:
    """Measured on the H100 profile: TTFT failed at 78.8%, the move to 84.8% then failed both SLOs.
    Before, the remembered TTFT failure left the controller no candidate below 84.8%; now 84.8% is
    the remembered bound (so 78.8% is reachable again), and a later TTFT-only failure at 78.8% does
    not reopen the way up to the split that failed both."""
    memory = ReversalMemory(60.0)
    step = 100 * 8 / 132
    memory.update(0.0, observe(78.8), {"ttft": 1.7, "tpot": 0.5}, {"ttft": 1.7}, step)
    both = {"ttft": 1.3, "tpot": 2.0}
    assert memory.update(10.0, observe(84.8), both, both, step) == (0, 84.8)
    assert memory.update(20.0, observe(78.8), {"ttft": 1.2, "tpot": 0.7}, {"ttft": 1.2}, step) == (0, 84.8)
    # With no remembered failure, a split failing both leaves the whole range to the attainment rule.
    assert ReversalMemory(60.0).update(0.0, observe(60.0), both, both, step) == (0, 100)
