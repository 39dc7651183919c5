"""Closed loop: the controller against a deterministic synthetic GPU.

The plant is both the resource manager and the metrics source. Its TTFT and TPOT are
functions of the split and a fixed load - TTFT = a / (x - lam) + b (prefill with M/M/1
queueing), TPOT = c / min(y, sat) + d (decode saturating past ``sat`` percent, as the
H100 measurements show) - and its window blends, second by second, the splits that were
in force during the last 30 s, so the controller sees stale samples after a move.
From a violating start the controller must reach compliance within a bounded number of
cycles and then stop moving.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from semipd.allocation import SMAllocation, SMGrid
from semipd.clock import VirtualClock
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo import CandidateBounds, Decision, SLOAwareResourceController, SLOConstraints

SPREAD = np.linspace(0.6, 1.0, 20)  # per-second samples; the window's p95 is ~0.98 x the plant's value
GRID = SMGrid(132, 8, 8)
SLO = SLOConstraints()  # 100 ms TTFT, 50 ms TPOT at P95, violation above 1.1x


@dataclass(frozen=True)
class Load:
    a: float
    lam: float
    b: float
    c: float
    d: float
    sat: float = 60.0

    def ttft(self, x: float) -> float:
        return self.a / max(x - self.lam, 0.5) + self.b

    def tpot(self, y: float) -> float:
        return self.c / min(y, self.sat) + self.d


DECODE_HEAVY = Load(a=2000, lam=10, b=20, c=2000, d=5)  # 70/30: TPOT 72 ms
PREFILL_HEAVY = Load(a=3000, lam=20, b=20, c=1000, d=10)  # 30/70: TTFT 320 ms


class Plant:
    """A synthetic GPU: `ResourceManager` and metrics source in one."""

    def __init__(self, clock: VirtualClock, load: Load, start: SMAllocation, grid: SMGrid | None,
                 window: float = 30.0, rate: float = 10.0) -> None:
        self.clock, self.load, self.grid, self.window, self.rate = clock, load, grid, window, rate
        self.switches: list[tuple[float, SMAllocation]] = [(-1e9, start)]

    @property
    def allocation(self) -> SMAllocation:
        return self.switches[-1][1]

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def get_status(self) -> dict[str, Any]:
        status: dict[str, Any] = {"current_sm_allocation": self.allocation.as_dict()}
        if self.grid is not None:
            status["sm_grid"] = self.grid.as_dict()
        return status

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        if self.grid is not None:
            self.grid.prefill_sms(new_allocation)
        self.switches.append((self.clock.now(), new_allocation))
        return True

    def get_current_window_metrics(self) -> AggregatedMetrics:
        now = self.clock.now()
        ttft, tpot = [], []
        for t in np.arange(now - self.window + 1, now + 1e-9, 1.0):
            alloc = [a for (start, a) in self.switches if start <= t][-1]
            ttft.append(self.load.ttft(alloc.prefill_percentage) * SPREAD)
            tpot.append(self.load.tpot(alloc.decode_percentage) * SPREAD)
        ttft_s, tpot_s = np.concatenate(ttft), np.concatenate(tpot)
        return AggregatedMetrics(window_start_time=now - self.window, window_end_time=now,
                                 request_throughput=self.rate, request_arrival_rate=self.rate,
                                 num_waiting_prefill=int(self.rate * ttft_s.mean() / 1000),
                                 ttft_samples=ttft_s, tpot_samples=tpot_s)

    def ratios(self) -> tuple[float, float]:
        """The current split's P95 / target, as a settled window reads them."""
        x, y = self.allocation.prefill_percentage, self.allocation.decode_percentage
        p95 = float(np.percentile(SPREAD, 95))
        return p95 * self.load.ttft(x) / SLO.ttft_target_ms, p95 * self.load.tpot(y) / SLO.tpot_target_ms


def run(load: Load, start: SMAllocation, predictor: str, grid: SMGrid | None, steps: int = 120,
        **kwargs: Any) -> tuple[Plant, list[Decision], SLOAwareResourceController]:
    clock = VirtualClock()
    plant = Plant(clock, load, grid.nearest(start) if grid else start, grid)
    ctrl = SLOAwareResourceController(SLO, plant, plant, monitoring_interval=5.0, predictor=predictor,
                                      cooldown_seconds=10.0, clock=clock, **kwargs)
    decisions = []
    for _ in range(steps):
        clock.advance(5.0)
        decisions.append(ctrl.step())
    return plant, decisions, ctrl


def adjustments(decisions: list[Decision]) -> list[int]:
    return [i for i, d in enumerate(decisions) if d.action == "adjust"]


@pytest.mark.parametrize("grid", [None, GRID], ids=["percent", "grid"])
@pytest.mark.parametrize("predictor", ["heuristic", "paper"])
@pytest.mark.parametrize(("load", "start"), [(DECODE_HEAVY, SMAllocation(70, 30)),
                                             (PREFILL_HEAVY, SMAllocation(30, 70))],
                         ids=["decode-heavy-from-70-30", "prefill-heavy-from-30-70"])
def test_reaches_compliance_then_stops_moving(load: Load, start: SMAllocation, predictor: str,
                                              grid: SMGrid | None) -> None:
    plant, decisions, _ = run(load, start, predictor, grid)
    first = decisions[0]
    assert first.violations and first.action == "adjust"  # a violating start
    moves = adjustments(decisions)
    assert moves and moves[-1] < 30, f"still moving at cycle {moves[-1]}"  # compliant within 150 s
    assert len(moves) <= 5
    assert all(d.action in ("keep", "hold") and not d.violations for d in decisions[40:])  # 400 s without a move
    ttft_ratio, tpot_ratio = plant.ratios()
    assert ttft_ratio <= SLO.ttft_violation_threshold and tpot_ratio <= SLO.tpot_violation_threshold
    if grid is not None:
        for _, alloc in plant.switches[1:]:
            grid.prefill_sms(alloc)  # only realisable splits were asked for


def test_paper_predictor_learns_the_plant() -> None:
    # One grid step per move, so that the controller visits (and the fit sees) several splits.
    plant, _, ctrl = run(PREFILL_HEAVY, SMAllocation(30, 70), "paper", GRID, steps=60,
                         candidate_bounds=CandidateBounds(max_steps=1))
    fit = ctrl.slo_algorithm.predictor.describe()["ttft_fit"]
    assert fit is not None
    assert fit["c"] * plant.rate == pytest.approx(PREFILL_HEAVY.lam, rel=0.05)  # the queueing pole
    observation = ctrl.slo_algorithm.observe(plant.get_current_window_metrics(), plant.allocation)
    p95 = float(np.percentile(SPREAD, 95))
    for sms in (40, 56, 88, 96):  # splits it never ran
        alloc = GRID.allocation(sms)
        predicted = ctrl.slo_algorithm.predictor.predict(alloc, observation).ttft_ms
        assert predicted == pytest.approx(p95 * PREFILL_HEAVY.ttft(alloc.prefill_percentage), rel=0.02)


# A load whose only compliant split on the grid is 104/28 SMs (78.8/21.2): far from 50/50.
FAR_FROM_BALANCE = Load(a=4400, lam=28, b=14, c=330, d=11)


SEED_STEPS = CandidateBounds(max_steps=2)  # the seed's neighbourhood: at most 2 grid steps per move


def test_seed_selection_oscillates_without_monotone_moves() -> None:
    """Why `monotone_moves` exists: in the seed's neighbourhood the seed's heuristic predicts relative
    to a 50% share, so with TTFT violated at 72.7% prefill it believes 60.6% also meets TTFT and,
    preferring balance, moves there; the TTFT miss grows, it moves back, and so on forever."""
    _, decisions, _ = run(FAR_FROM_BALANCE, SMAllocation(70, 30), "heuristic", GRID, monotone_moves=False,
                          reversal_memory_seconds=None, candidate_bounds=SEED_STEPS)
    late = adjustments(decisions[60:])
    assert len(late) >= 4
    moved_to = {decisions[60 + i].choice for i in late}
    assert {round(GRID.prefill_sms(a)) for a in moved_to if a is not None} == {80, 96}


@pytest.mark.parametrize("guard", [dict(reversal_memory_seconds=None), dict(monotone_moves=False)],
                         ids=["monotone-moves", "reversal-memory"])
def test_monotone_moves_or_the_reversal_memory_stop_that_oscillation(guard: dict[str, Any]) -> None:
    plant, decisions, _ = run(FAR_FROM_BALANCE, SMAllocation(70, 30), "heuristic", GRID, candidate_bounds=SEED_STEPS,
                              **guard)
    assert not adjustments(decisions[40:])
    assert GRID.prefill_sms(plant.allocation) == 104
    assert max(plant.ratios()) <= 1.1


def test_reversal_memory_brackets_a_predictor_that_overshoots() -> None:
    """From 30/70 on the prefill-heavy load the heuristic jumps to 80/20 (TTFT), where TPOT fails, and
    would jump back toward the balanced split it prefers; the memory of the split that failed TTFT
    keeps the way back above it, so the moves close in on a compliant split instead of swinging."""
    _, swinging, _ = run(PREFILL_HEAVY, SMAllocation(30, 70), "heuristic", None, reversal_memory_seconds=None)
    assert len(adjustments(swinging[60:])) >= 4
    plant, decisions, _ = run(PREFILL_HEAVY, SMAllocation(30, 70), "heuristic", None)
    assert not adjustments(decisions[40:]) and max(plant.ratios()) <= 1.1


# Compliant only at 104 SMs of prefill; the heuristic's bias hides it from 88 SMs.
STALLS_HEURISTIC = Load(a=4600, lam=17, b=25, c=820, d=11.5, sat=100)


def test_heuristic_bias_can_stall_where_paper_converges() -> None:
    """A documented limit of the seed's heuristic in the seed's neighbourhood: at 66.7/33.3 with TTFT
    at 1.15x, its x / 50 factor makes the current split's TTFT look met and its y / 50 factor puts
    TPOT at 53 ms, a worst ratio of 1.06; 72.7/27.3 it predicts at 1.30 (TPOT 65 ms, truly 41 ms), so
    no move lowers the worst ratio and it keeps a violating split. The paper predictor scales from
    what it observes at the current split and moves on to 78.8/21.2; so does the heuristic when every
    split in the bounds is a candidate (the default), as the move to it is then one decision."""
    plant, decisions, _ = run(STALLS_HEURISTIC, SMAllocation(30, 70), "heuristic", GRID, candidate_bounds=SEED_STEPS)
    assert not adjustments(decisions[40:])
    assert decisions[-1].violations.keys() == {"ttft"} and decisions[-1].action == "keep"
    assert plant.ratios()[0] > 1.1
    for predictor, bounds in (("paper", SEED_STEPS), ("heuristic", None)):
        plant, decisions, _ = run(STALLS_HEURISTIC, SMAllocation(30, 70), predictor, GRID, candidate_bounds=bounds)
        assert not adjustments(decisions[40:])
        assert max(plant.ratios()) <= 1.1
