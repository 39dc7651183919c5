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


# A load whose compliant splits are far from 50/50: 104 or 112 SMs of prefill.
FAR_FROM_BALANCE = Load(a=4400, lam=28, b=14, c=330, d=11)


SEED_STEPS = CandidateBounds(max_steps=2)  # the seed's neighbourhood: at most 2 grid steps per move


@pytest.mark.parametrize("guards", [dict(monotone_moves=False, reversal_memory_seconds=None),
                                    dict(reversal_memory_seconds=None), dict(monotone_moves=False)],
                         ids=["no-guards", "monotone-moves", "reversal-memory"])
def test_the_seed_heuristic_reaches_a_far_split_and_stays(guards: dict[str, Any]) -> None:
    """The seed's heuristic predicts relative to a 50% share: with TTFT violated at 72.7% it used to believe
    60.6% also met TTFT and, preferring balance, moved there and back for ever. Candidates are now compared
    by what the heuristic predicts relative to its own answer for the current split, applied to what the
    window reads, so its bias cancels: even without the guards it moves once, to a compliant split."""
    plant, decisions, _ = run(FAR_FROM_BALANCE, SMAllocation(70, 30), "heuristic", GRID, candidate_bounds=SEED_STEPS,
                              **guards)
    assert len(adjustments(decisions)) == 1 and not adjustments(decisions[10:])
    assert GRID.prefill_sms(plant.allocation) >= 104
    assert max(plant.ratios()) <= 1.0


# Compliant only at 104 SMs of prefill (decode saturates at 100% here, so every SM counts for TPOT).
STALLS_HEURISTIC = Load(a=4600, lam=17, b=25, c=820, d=11.5, sat=100)


@pytest.mark.parametrize(("predictor", "bounds"), [("heuristic", SEED_STEPS), ("paper", SEED_STEPS),
                                                   ("heuristic", None)], ids=["heuristic-steps", "paper-steps",
                                                                             "heuristic-whole-range"])
def test_a_narrow_compliant_split_is_found_from_far_away(predictor: str, bounds: CandidateBounds | None) -> None:
    """From 30/70 the only compliant split, 104 SMs, is reached: in 2-step moves by either predictor; across
    the whole range the heuristic's clamped factors overshoot (120, then 80 SMs), and the moves toward the
    phase that misses close in on it (112, 88, 104). (The seed's heuristic used to stall at 88 SMs here.)"""
    plant, decisions, _ = run(STALLS_HEURISTIC, SMAllocation(30, 70), predictor, GRID, candidate_bounds=bounds)
    moves = adjustments(decisions)
    assert moves and len(moves) <= 5 and moves[-1] < 40 and not adjustments(decisions[40:])
    assert GRID.prefill_sms(plant.allocation) == 104
    assert max(plant.ratios()) <= 1.0
