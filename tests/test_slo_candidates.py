"""Candidate generation: the seed's percent steps, and realisable splits on an SMGrid."""

from __future__ import annotations

import pytest

from semipd.allocation import SMAllocation, SMGrid
from semipd.slo import CandidateBounds, generate_candidates


def _splits(candidates) -> set[tuple[float, float]]:
    return {(round(c.prefill_percentage, 6), round(c.decode_percentage, 6)) for c in candidates}


SEED = CandidateBounds(min_prefill_percentage=20, max_prefill_percentage=80, min_decode_percentage=20,
                      max_decode_percentage=80, max_steps=2)  # the seed's bounds and neighbourhood


def test_percent_steps_follow_the_seed_loop() -> None:
    current = SMAllocation(50, 50)
    got = _splits(generate_candidates(current, SEED))
    expected = set()
    for dp in (-2, -1, 0, 1, 2):
        for dd in (-2, -1, 0, 1, 2):
            p, d = 50 + 10 * dp, 50 + 10 * dd
            if (dp, dd) != (0, 0) and 20 <= p <= 80 and 20 <= d <= 80 and p + d <= 100:
                expected.add((p, d))
    assert got == expected
    assert (50, 50) not in got and (60, 40) in got and (40, 40) in got and (60, 50) not in got


def test_percent_bounds_are_configurable() -> None:
    bounds = CandidateBounds(min_prefill_percentage=40, max_prefill_percentage=60, min_decode_percentage=30,
                             max_decode_percentage=70, adjustment_step=5, max_steps=2)
    got = generate_candidates(SMAllocation(60, 40), bounds)
    assert got
    for c in got:
        assert 40 <= c.prefill_percentage <= 60 and 30 <= c.decode_percentage <= 70
        assert c.prefill_percentage + c.decode_percentage <= 100
    assert max(c.prefill_percentage for c in got) == 60
    assert min(c.prefill_percentage for c in got) == 50


def test_max_steps_sets_the_neighbourhood() -> None:
    got = generate_candidates(SMAllocation(50, 50), CandidateBounds(max_steps=1))
    assert _splits(got) == {(40, 40), (40, 50), (40, 60), (50, 40), (60, 40)}


def test_grid_candidates_are_realisable_neighbours() -> None:
    grid = SMGrid(132, 8, 8)
    current = grid.allocation(64)
    got = generate_candidates(current, SEED, grid)
    sms = sorted(grid.prefill_sms(c.allocation) for c in got)  # raises if any is not realisable
    assert sms == [48, 56, 72, 80]
    for c in got:
        assert c.prefill_percentage + c.decode_percentage == pytest.approx(100.0)


def test_grid_candidates_respect_bounds_and_edges() -> None:
    grid = SMGrid(132, 8, 8)
    # 104 SMs = 78.8%: +8 would be 85% prefill (> 80) and leave decode 15% (< 20).
    got = generate_candidates(grid.allocation(104), SEED, grid)
    assert sorted(grid.prefill_sms(c.allocation) for c in got) == [88, 96]
    wide = CandidateBounds(min_prefill_percentage=1, max_prefill_percentage=100, min_decode_percentage=1,
                           max_decode_percentage=100, max_steps=2)
    got = generate_candidates(grid.allocation(120), wide, grid)  # the last choice on the grid
    assert sorted(grid.prefill_sms(c.allocation) for c in got) == [104, 112]


def test_off_grid_current_also_offers_its_nearest_split() -> None:
    grid = SMGrid(132, 8, 8)
    got = generate_candidates(SMAllocation(70, 30), SEED, grid)  # 92.4 SMs: nearest 96
    assert sorted(grid.prefill_sms(c.allocation) for c in got) == [80, 88, 96, 104]


def test_by_default_every_split_of_the_grid_is_a_candidate() -> None:
    """The whole reachable range: on the H100 grid (8-SM steps, 16 a side) 16..116 prefill SMs, all
    but the current 64; a prefill-heavy load is best served past the seed's 80% (104 SMs)."""
    grid = SMGrid(132, 8, 16)
    got = generate_candidates(grid.allocation(64), CandidateBounds(), grid)
    assert sorted(grid.prefill_sms(c.allocation) for c in got) == [p for p in range(16, 117, 8) if p != 64]
    percent = _splits(generate_candidates(SMAllocation(50, 50), CandidateBounds()))
    assert (10, 90) in percent and (90, 10) in percent and (10, 10) in percent and (50, 50) not in percent
    assert all(0 < p and 0 < d and p + d <= 100 for p, d in percent)  # never a phase without SMs


def test_a_cap_still_bounds_the_candidates() -> None:
    grid = SMGrid(132, 8, 16)
    capped = CandidateBounds(max_prefill_percentage=80.0)
    got = generate_candidates(grid.allocation(64), capped, grid)
    assert max(grid.prefill_sms(c.allocation) for c in got) == 104


def test_candidate_as_dict_and_distance() -> None:
    c = generate_candidates(SMAllocation(50, 50), CandidateBounds())[0]
    assert set(c.as_dict()) >= {"prefill_percentage", "decode_percentage", "predicted_ttft", "predicted_tpot",
                                "predicted_throughput", "meets_slo"}
    assert c.distance(SMAllocation(50, 50)) == abs(c.prefill_percentage - 50) + abs(c.decode_percentage - 50)
