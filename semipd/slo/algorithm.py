"""The SLO algorithm: detect violations -> generate candidates -> predict -> select.

Detection (the seed's 2.2, at the configured percentiles): an SLO is violated when its
percentile over the window, divided by its target, exceeds its violation threshold.
An SLO needs ``min_samples`` samples in the window to be judged. TTFT also reads the
prefill queue (see `semipd.slo.observation`): a queue of at least ``queue_min_waiting``
requests whose Little's-law wait exceeds the threshold is a TTFT violation even while
the percentile, which only moves once the queued requests get their first token, looks
fine. A predictor that `forecasts` (the measured ``profile``, whose predictions are
absolute rather than scaled from the window) also raises a violation when it predicts one
for the current split under the window's load, e.g. as soon as the arrival rate jumps and
before the decode batch has grown into a TPOT miss. The algorithm acts only on a
violation; a compliant split is never moved, so once the SLOs are met the allocation
stays put (the threshold above 1 is hysteresis).

Candidates (2.3) are the neighbours of the current split, on the resource manager's
`SMGrid` when it has one (`semipd.slo.candidates`). With ``monotone_moves`` (default)
a candidate must give more SMs to the phase whose SLO alone is violated: a phase never
gets faster with fewer or the same SMs, so any other move is a predictor's error. The seed's
heuristic makes that error: its factors are relative to a 50% share, so from 72/28 with
TTFT violated it predicts that 61/39 also meets TTFT, and its throughput term prefers the
more balanced split; on a load whose only feasible split is far from 50/50 it then
alternates between two splits forever (`tests/test_controller_closed_loop.py` shows it).
Each remaining candidate is predicted (2.4) by the configured predictor, and so is the
current split, so that candidates are compared with the same model's view of the current
split (the seed's heuristic is biased toward 50% and would otherwise look worse or better
than the raw observation for no reason).

Selection (2.5) and the two policies the seed leaves open:

- Some candidates are predicted to meet both SLOs: the one with the highest predicted
  throughput (the seed). Ties, as when every feasible split carries the whole load, go to
  the lowest predicted worst ratio (most headroom), then to the smallest move.
- No candidate is predicted to meet both SLOs: the candidate that minimises the worst
  predicted ratio max(TTFT / target, TPOT / target), if that is at least
  ``min_improvement`` (relative) below the current split's predicted worst ratio; else
  keep the split. Moving when nothing fits still helps if it shrinks the worst miss, and
  refusing moves that do not keeps a hopeless overload from shuffling SMs back and forth.
- Both SLOs violated: the same rule. The paper's text keeps the partition, its
  pseudo-code raises prefill and its prototype gives both phases 100% (impossible with
  disjoint partitions). Raising prefill regardless would starve decode when TPOT is the
  worse miss; minimising the worst ratio moves SMs toward the phase that misses more and
  stops where the two misses balance, which is the best a fixed total of SMs can do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from semipd.allocation import SMAllocation, SMGrid
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.candidates import CandidateBounds, ResourceAllocationCandidate, generate_candidates
from semipd.slo.constraints import SLOConstraints
from semipd.slo.observation import Observation
from semipd.slo.predictors import Predictor, create_predictor

_TIE = 1e-9


@dataclass(frozen=True)
class Evaluation:
    """One pass of the algorithm over a window."""

    observation: Observation
    violations: dict[str, float]
    """Violated SLOs ("ttft", "tpot") and their ratios to target (see `SLOAlgorithm.detect_slo_violations`)."""
    current: ResourceAllocationCandidate | None
    """The current split as predicted (None when nothing was violated, so nothing was predicted)."""
    candidates: tuple[ResourceAllocationCandidate, ...]
    choice: SMAllocation | None
    """The split to move to, or None to keep the current one."""
    reason: str


class SLOAlgorithm:
    """Detects SLO violations in a window and picks the split to move to.

    `predictor` is a registered name (``heuristic``, ``paper``, ``profile``) or a
    `Predictor`; `predictor_options` are passed to the registered constructor (e.g.
    ``{"profile": fn}`` for ``profile``).
    """

    def __init__(self, slo_constraints: SLOConstraints, predictor: str | Predictor = "heuristic",
                 bounds: CandidateBounds | None = None, min_samples: int = 10, queue_min_waiting: int | None = 8,
                 min_improvement: float = 0.05, predictor_options: dict[str, Any] | None = None,
                 monotone_moves: bool = True) -> None:
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if queue_min_waiting is not None and (isinstance(queue_min_waiting, bool)
                                              or not isinstance(queue_min_waiting, int) or queue_min_waiting < 1):
            raise ValueError(f"queue_min_waiting must be an integer >= 1 or None, got {queue_min_waiting!r}")
        if not (isinstance(min_improvement, (int, float)) and 0 <= min_improvement < 1):
            raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement!r}")
        if isinstance(predictor, str):
            predictor = create_predictor(predictor, **(predictor_options or {}))
        elif predictor_options:
            raise ValueError("predictor_options only apply when predictor is given by name")
        self.slo_constraints = slo_constraints
        self.predictor = predictor
        self.bounds = bounds or CandidateBounds()
        self.min_samples = min_samples
        self.queue_min_waiting = queue_min_waiting
        self.min_improvement = float(min_improvement)
        self.monotone_moves = monotone_moves

    def observe(self, metrics: AggregatedMetrics, allocation: SMAllocation) -> Observation:
        """Read a window against the SLOs (does not teach the predictor)."""
        return Observation.from_metrics(metrics, allocation, self.slo_constraints, self.min_samples,
                                        self.queue_min_waiting)

    def detect_slo_violations(self, observation: Observation) -> dict[str, float]:
        """Violated SLOs and their ratios: seed 2.2 at the configured percentiles, plus the queue,
        plus what a forecasting predictor expects of the current split (the larger ratio wins)."""
        slo = self.slo_constraints
        ttft, tpot = observation.ttft_ms, observation.tpot_ms
        if self.predictor.forecasts:
            forecast = self.predictor.predict(observation.allocation, observation)
            ttft, tpot = max(ttft, forecast.ttft_ms), max(tpot, forecast.tpot_ms)
        violations = {}
        if ttft / slo.ttft_target_ms > slo.ttft_violation_threshold:
            violations["ttft"] = ttft / slo.ttft_target_ms
        if tpot / slo.tpot_target_ms > slo.tpot_violation_threshold:
            violations["tpot"] = tpot / slo.tpot_target_ms
        return violations

    def should_adjust_resources(self, metrics: AggregatedMetrics, allocation: SMAllocation) -> bool:
        """Whether the window under `allocation` violates an SLO (seed 3.2)."""
        return bool(self.detect_slo_violations(self.observe(metrics, allocation)))

    def compute_optimal_allocation(self, metrics: AggregatedMetrics, allocation: SMAllocation,
                                   sm_grid: SMGrid | None = None) -> SMAllocation | None:
        """The split to move to, or None to keep `allocation` (seed 3.2). Teaches the predictor."""
        return self.evaluate(metrics, allocation, sm_grid).choice

    def evaluate(self, metrics: AggregatedMetrics, allocation: SMAllocation, sm_grid: SMGrid | None = None,
                 learn: bool = True) -> Evaluation:
        """Detect, generate, predict and select. With `learn`, the predictor first learns from
        the window (pass False when the window still holds samples of an earlier split)."""
        return self.decide(self.observe(metrics, allocation), sm_grid, learn)

    def decide(self, observation: Observation, sm_grid: SMGrid | None = None, learn: bool = True,
               violations: dict[str, float] | None = None) -> Evaluation:
        """`evaluate` for a window already read with `observe` (and its `violations`, if already detected)."""
        if learn:
            self.predictor.observe(observation)
        allocation = observation.allocation
        if violations is None:
            violations = self.detect_slo_violations(observation)
        if not violations:
            return Evaluation(observation, violations, None, (), None, "SLOs met: keep")
        current = self._predicted(ResourceAllocationCandidate(allocation.prefill_percentage,
                                                              allocation.decode_percentage), observation)
        candidates = tuple(self._predicted(c, observation)
                           for c in generate_candidates(allocation, self.bounds, sm_grid)
                           if self._allowed(c, allocation, violations))
        choice, reason = self._select(candidates, current, allocation)
        return Evaluation(observation, violations, current, candidates, choice, reason)

    def _allowed(self, candidate: ResourceAllocationCandidate, allocation: SMAllocation,
                 violations: dict[str, float]) -> bool:
        """With `monotone_moves`, whether `candidate` gives more SMs to the phase that alone misses its SLO."""
        if not self.monotone_moves or len(violations) != 1:
            return True
        if "ttft" in violations:
            return candidate.prefill_percentage > allocation.prefill_percentage + 1e-9
        return candidate.decode_percentage > allocation.decode_percentage + 1e-9

    def _predicted(self, candidate: ResourceAllocationCandidate, observation: Observation
                   ) -> ResourceAllocationCandidate:
        prediction = self.predictor.predict(candidate.allocation, observation)
        slo = self.slo_constraints
        meets = prediction.ttft_ms <= slo.ttft_target_ms and prediction.tpot_ms <= slo.tpot_target_ms
        return replace(
            candidate,
            predicted_ttft=prediction.ttft_ms,
            predicted_tpot=prediction.tpot_ms,
            predicted_throughput=prediction.throughput,
            meets_slo=meets,
            worst_ratio=max(prediction.ttft_ms / slo.ttft_target_ms, prediction.tpot_ms / slo.tpot_target_ms),
            overall_score=-prediction.throughput if meets else math.inf,
        )

    def _select(self, candidates: tuple[ResourceAllocationCandidate, ...], current: ResourceAllocationCandidate,
                allocation: SMAllocation) -> tuple[SMAllocation | None, str]:
        if not candidates:
            return None, "no candidate split within bounds that gives SMs to the phase missing its SLO: keep"
        feasible = [c for c in candidates if c.meets_slo]
        if feasible:
            top = max(c.predicted_throughput or 0.0 for c in feasible)
            near_top = [c for c in feasible if (c.predicted_throughput or 0.0) >= top * (1 - _TIE)]
            best = min(near_top, key=lambda c: (c.worst_ratio, c.distance(allocation)))
            return best.allocation, (f"{best.allocation}: highest predicted throughput ({top:.3g}) of "
                                     f"{len(feasible)} candidate(s) predicted to meet both SLOs")
        best = min(candidates, key=lambda c: (c.worst_ratio, -(c.predicted_throughput or 0.0),
                                              c.distance(allocation)))
        if best.worst_ratio < current.worst_ratio * (1 - self.min_improvement):
            return best.allocation, (f"{best.allocation}: no candidate is predicted to meet both SLOs; lowest "
                                     f"predicted worst ratio {best.worst_ratio:.3g} (current "
                                     f"{current.worst_ratio:.3g})")
        return None, (f"no candidate is predicted to meet both SLOs or to lower the worst ratio enough "
                      f"(best {best.worst_ratio:.3g}, current {current.worst_ratio:.3g}): keep")
