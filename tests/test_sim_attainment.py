"""Does SLO control pay on the simulated H100 (the engine's defaults: decode borrows prefill's idle SMs)?

Each ``slo:*`` policy, from the default 50/50 start, against the best static split (found by
climbing the single-peaked attainment curve over the grid's 16..112 prefill SMs) and against
unified serving, on: ``semipd simulate --phased``; the README's simulate example (Azure
conversation trace at 0.3x time, 3,000 requests); and the simulator workloads of the closed-loop
tests (`tests/test_sim_closed_loop.py`: decode-heavy, prefill-heavy, decode/prefill/decode a
minute each, prefill then decode two minutes each).

Where the controller does not reach both references the case is a strict xfail that gives the
measured numbers and the reason; the bound it does hold is tested separately. Measured
(SLO attainment, %; best static split's prefill SMs in brackets):

=============== ======= ============= ========= ======= =======
workload        unified best static   heuristic paper   profile
=============== ======= ============= ========= ======= =======
cli-phased      99.54   99.20 (112)   99.04     99.04   98.93
readme-azure    92.60   90.87 (112)   89.53     89.37   88.87
decode-heavy    100.00  100.00 (32)   100.00    100.00  100.00
prefill-heavy   84.28   98.81 (112)   98.13     98.13   98.13
there-and-back  87.29   96.87 (104)   95.66     95.57   97.44
phased-120      89.73   98.46 (104)   98.19     98.19   98.22
=============== ======= ============= ========= ======= =======

Two limits, neither in the decision rule:

- Unified beats every static split on the two prefill-bound loads (cli-phased, readme-azure):
  Semi-PD's prefill runs on at most 112 of the 132 SMs (decode keeps 20; the grid's largest
  prefill share) and is slowed ~9% by decode beside it, while unified's chunked prefill uses all
  132 SMs; decode borrows prefill's idle SMs but prefill cannot borrow decode's. TTFT misses make
  the gap (readme: 9% of requests late at 112 SMs, 4% under unified). No split, static or chosen
  by a controller, closes it.
- Against the best static split the controller pays for learning it: it starts at 50/50 and its
  first move needs a cycle of samples (5 s), then a cooldown (10 s) before the next; on the loads
  where one prefill-heavy split serves every phase (with borrowing, 104-112 prefill SMs also serve
  decode-heavy phases) there is nothing to win back. From an 85/15 start (``--initial-prefill 85``)
  heuristic and paper match or beat the best static split on every workload but there-and-back
  (heuristic 96.5%), and profile matches it everywhere but readme-azure (90.2%) and
  there-and-back (96.3%).
"""

from __future__ import annotations

from functools import cache

import pytest
from conftest import AZURE_TRACE

from semipd.allocation import SMGrid
from semipd.sim.runner import SimConfig, run_policy
from semipd.slo import SLOConstraints
from semipd.workload import (
    LengthDist,
    Phase,
    WorkloadRequest,
    load_azure_trace,
    phased_workload,
    prefill_heavy_then_decode_heavy,
    synthetic_workload,
)

CLOSED_LOOP_SLO = SLOConstraints(ttft_target_ms=600, tpot_target_ms=18)
CLI_SLO = SLOConstraints(ttft_target_ms=200, tpot_target_ms=30, ttft_percentile=90, tpot_percentile=90)
PREFILL_HEAVY = dict(input_len=LengthDist.uniform(2500, 4500), output_len=LengthDist.uniform(16, 64))
DECODE_HEAVY = dict(input_len=LengthDist.uniform(256, 768), output_len=LengthDist.uniform(300, 700))
PREDICTORS = ("heuristic", "paper", "profile")
GAP = 0.025
"""The most the controller falls short of the best static split, on any of these workloads (readme-azure,
profile: 2.0 points)."""


def _workload(name: str) -> tuple[list[WorkloadRequest], SLOConstraints]:
    if name == "cli-phased":
        return prefill_heavy_then_decode_heavy(240.0, seed=0), CLI_SLO
    if name == "readme-azure":
        if not AZURE_TRACE.exists():
            pytest.skip(f"trace not found at {AZURE_TRACE}")
        return load_azure_trace(AZURE_TRACE, time_scale=0.3, max_requests=3000), CLI_SLO
    if name == "decode-heavy":
        return synthetic_workload(17, duration=120, seed=1, **DECODE_HEAVY), CLOSED_LOOP_SLO
    if name == "prefill-heavy":
        return synthetic_workload(5, duration=240, seed=1, **PREFILL_HEAVY), CLOSED_LOOP_SLO
    if name == "there-and-back":
        phases = [Phase(60, 17, **DECODE_HEAVY), Phase(60, 7, **PREFILL_HEAVY), Phase(60, 17, **DECODE_HEAVY)]
        return phased_workload(phases, seed=0), CLOSED_LOOP_SLO
    assert name == "phased-120"
    return phased_workload([Phase(120, 7, **PREFILL_HEAVY), Phase(120, 17, **DECODE_HEAVY)], seed=0), CLOSED_LOOP_SLO


@cache
def references(name: str) -> tuple[float, float, int]:
    """(unified's attainment, the best static split's attainment, its prefill SMs) on workload `name`."""
    workload, slo = _workload(name)
    config = SimConfig(slo=slo)
    choices = SMGrid(132, config.sm_granularity, config.min_sms).prefill_sm_choices()
    seen: dict[int, float] = {}

    def static(i: int) -> float:
        if not 0 <= i < len(choices):
            return -1.0
        if choices[i] not in seen:
            p = choices[i]
            seen[p] = run_policy(workload, f"static:{100 * p / 132}/{100 - 100 * p / 132}",
                                 config).summary(slo)["slo_attainment"]
        return seen[choices[i]]

    i = len(choices) // 2
    while static(better := max((i - 1, i + 1), key=static)) > static(i):
        i = better
    unified = run_policy(workload, "unified", config).summary(slo)["slo_attainment"]
    return unified, seen[choices[i]], choices[i]


@cache
def controlled(name: str, predictor: str) -> float:
    workload, slo = _workload(name)
    return run_policy(workload, f"slo:{predictor}", SimConfig(slo=slo)).summary(slo)["slo_attainment"]


UNIFIED_AHEAD = "unified beats every static split here: prefill gets at most 112 of 132 SMs (see the docstring)"
LEARNING = "the controller starts at 50/50 and pays for finding the best split (see the docstring)"
SHORT = {(w, p): UNIFIED_AHEAD for w in ("cli-phased", "readme-azure") for p in PREDICTORS}
SHORT |= {(w, p): LEARNING for w in ("prefill-heavy", "phased-120") for p in PREDICTORS}
SHORT |= {("there-and-back", "heuristic"): LEARNING, ("there-and-back", "paper"): LEARNING}
WORKLOADS = ("cli-phased", "readme-azure", "decode-heavy", "prefill-heavy", "there-and-back", "phased-120")
CASES = [pytest.param(w, p, id=f"{w}-{p}", marks=[pytest.mark.slow] + (
    [pytest.mark.xfail(strict=True, reason=SHORT[(w, p)])] if (w, p) in SHORT else []))
         for w in WORKLOADS for p in PREDICTORS]


@pytest.mark.parametrize(("workload", "predictor"), CASES)
def test_slo_control_reaches_the_best_static_split_and_unified(workload: str, predictor: str) -> None:
    unified, best, best_sms = references(workload)
    attained = controlled(workload, predictor)
    assert attained >= best, (attained, best, best_sms)
    assert attained >= unified, (attained, unified)


@pytest.mark.slow
@pytest.mark.parametrize("workload", WORKLOADS)
def test_slo_control_stays_close_to_the_best_static_split(workload: str) -> None:
    """The bound that does hold: within GAP (2.5 points) of the best static split everywhere, and above
    unified wherever a static split is."""
    unified, best, best_sms = references(workload)
    for predictor in PREDICTORS:
        attained = controlled(workload, predictor)
        assert attained >= best - GAP, (predictor, attained, best, best_sms)
        if best >= unified:
            assert attained >= unified, (predictor, attained, unified)
