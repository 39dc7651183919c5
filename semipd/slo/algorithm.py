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
before the decode batch has grown into a TPOT miss. The seed acts only on a violation;
this algorithm also acts, more cautiously, on a miss within the threshold that persists
and on an SLO nearing its target while the other has room (`decide`'s ``require_feasible``
and ``min_gain``; the controller decides when), so that the band between target and
threshold stays hysteresis rather than a place to get stuck, and a load shift is answered
before it turns into violations.

Candidates (2.3) are the splits within the bounds (`semipd.slo.candidates`; by default
anywhere within them, the seed: 2 steps), on the resource manager's `SMGrid` when it has
one. With ``monotone_moves`` (default)
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

Selection (2.5) and the policies the seed leaves open:

- Some candidates are predicted to meet both SLOs: the one with the highest predicted
  throughput (the seed). Ties, as when every feasible split carries the whole load, go to
  the lowest predicted worst ratio (most headroom for the SLO closest to its target), then
  to the smallest move. With every split in the bounds a candidate, that is where the two
  SLOs' predicted ratios balance: one decision makes the whole move a violation needs, and
  the split lands with headroom on both sides instead of just inside the target it missed
  (an attainment target of P95 met exactly still means 5% of requests late).
- The current split stays a candidate ("stay") when a forecasting predictor (whose
  predictions are absolute, not scaled from the window) predicts that it meets both SLOs:
  the window's miss is then stale (samples of an earlier load) and moving would only have
  to be undone. Predictors that scale from the window describe the current split by the
  observation itself (paper) or by a biased share factor (the seed's heuristic), so they
  never vouch for it.
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
- A miss within the threshold (the controller acts on one that persists; see
  `semipd.slo.controller`): only a move to a split predicted to meet both SLOs
  (``require_feasible``), never the worst-ratio rule, so the band keeps its purpose.
- The controller may also narrow the range of prefill shares (``prefill_range``) to keep a
  move from going back past a split that recently violated the other SLO.
- Anticipation (`pressing`): an SLO at ``rebalance_above`` of its target or more while
  none is violated. A load that shifts toward one phase shows first as that phase's ratio
  climbing while the other phase's falls; waiting for the violation means acting after the
  requests in flight have already missed (a decode batch keeps growing for a request
  length after the arrival mix changes). The algorithm then moves, like for a persistent
  miss, only to a split predicted to meet both SLOs, and only if that lowers the predicted
  worst ratio by ``rebalance_gain`` (relative): a split whose ratios are balanced has no
  such move, so a steady load does not move the split back and forth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from semipd.allocation import SMAllocation, SMGrid
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.candidates import CandidateBounds, ResourceAllocationCandidate, generate_candidates
from semipd.slo.constraints import SLOConstraints
from semipd.slo.decision import format_split
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
                 monotone_moves: bool = True, rebalance_above: float | None = 0.8,
                 rebalance_gain: float = 0.25) -> None:
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if queue_min_waiting is not None and (isinstance(queue_min_waiting, bool)
                                              or not isinstance(queue_min_waiting, int) or queue_min_waiting < 1):
            raise ValueError(f"queue_min_waiting must be an integer >= 1 or None, got {queue_min_waiting!r}")
        if not (isinstance(min_improvement, (int, float)) and 0 <= min_improvement < 1):
            raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement!r}")
        if rebalance_above is not None and not (isinstance(rebalance_above, (int, float))
                                                and not isinstance(rebalance_above, bool) and rebalance_above > 0):
            raise ValueError(f"rebalance_above must be None or a number > 0, got {rebalance_above!r}")
        if not (isinstance(rebalance_gain, (int, float)) and not isinstance(rebalance_gain, bool)
                and 0 <= rebalance_gain < 1):
            raise ValueError(f"rebalance_gain must be in [0, 1), got {rebalance_gain!r}")
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
        self.rebalance_above = None if rebalance_above is None else float(rebalance_above)
        self.rebalance_gain = float(rebalance_gain)

    def observe(self, metrics: AggregatedMetrics, allocation: SMAllocation) -> Observation:
        """Read a window against the SLOs (does not teach the predictor)."""
        return Observation.from_metrics(metrics, allocation, self.slo_constraints, self.min_samples,
                                        self.queue_min_waiting)

    def slo_ratios(self, observation: Observation) -> dict[str, float]:
        """Each SLO's effective latency over its target: the observation (with the queue), or
        what a forecasting predictor expects of the current split when that is larger."""
        slo = self.slo_constraints
        ttft, tpot = observation.ttft_ms, observation.tpot_ms
        if self.predictor.forecasts:
            forecast = self.predictor.predict(observation.allocation, observation)
            ttft, tpot = max(ttft, forecast.ttft_ms), max(tpot, forecast.tpot_ms)
        return {"ttft": ttft / slo.ttft_target_ms, "tpot": tpot / slo.tpot_target_ms}

    def detect_slo_violations(self, observation: Observation) -> dict[str, float]:
        """Violated SLOs and their ratios: seed 2.2 at the configured percentiles, plus the queue,
        plus what a forecasting predictor expects of the current split (the larger ratio wins)."""
        return self.violated(self.slo_ratios(observation))

    def violated(self, ratios: dict[str, float]) -> dict[str, float]:
        """The `slo_ratios` above their violation thresholds."""
        slo = self.slo_constraints
        thresholds = {"ttft": slo.ttft_violation_threshold, "tpot": slo.tpot_violation_threshold}
        return {name: ratio for name, ratio in ratios.items() if ratio > thresholds[name]}

    def pressing(self, ratios: dict[str, float]) -> dict[str, float]:
        """The SLO to anticipate: the one with the larger ratio, if at least ``rebalance_above``."""
        name = max(ratios, key=lambda k: ratios[k])
        if self.rebalance_above is None or ratios[name] < self.rebalance_above:
            return {}
        return {name: ratios[name]}

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
               violations: dict[str, float] | None = None, require_feasible: bool = False,
               min_gain: float = 0.0, prefill_range: tuple[float, float] = (0.0, 100.0)) -> Evaluation:
        """`evaluate` for a window already read with `observe` (and its `violations`, if already
        detected). With `require_feasible`, move only to a split predicted to meet both SLOs,
        and only if its predicted worst ratio is `min_gain` (relative) below the current split's
        (for a persistent miss within the threshold or an anticipated one, passed as `violations`).
        Candidates lie strictly inside `prefill_range` (prefill percent; the controller's memory of
        splits that recently violated an SLO)."""
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
                           if self._allowed(c, allocation, violations)
                           and prefill_range[0] + 1e-9 < c.prefill_percentage < prefill_range[1] - 1e-9)
        choice, reason = self._select(candidates, current, allocation, require_feasible, min_gain)
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
                allocation: SMAllocation, require_feasible: bool = False,
                min_gain: float = 0.0) -> tuple[SMAllocation | None, str]:
        stay = current.meets_slo and self.predictor.forecasts
        if not candidates and not stay:
            return None, "no candidate split within bounds that gives SMs to the phase missing its SLO: keep"
        feasible = [c for c in candidates if c.meets_slo] + ([current] if stay else [])
        if feasible:
            top = max(c.predicted_throughput or 0.0 for c in feasible)
            near_top = [c for c in feasible if (c.predicted_throughput or 0.0) >= top * (1 - _TIE)]
            best = min(near_top, key=lambda c: (c.worst_ratio, c.distance(allocation)))
            if best is current:
                return None, (f"the current split is predicted to meet both SLOs with as much headroom as any "
                              f"(worst ratio {current.worst_ratio:.3g}): keep")
            if min_gain > 0 and best.worst_ratio > current.worst_ratio * (1 - min_gain):
                return None, (f"no split is predicted to lower the worst ratio by {min_gain:.0%} "
                              f"(best {best.worst_ratio:.3g}, current {current.worst_ratio:.3g}): keep")
            return best.allocation, (f"{format_split(best.allocation)}: highest predicted throughput ({top:.3g}) of "
                                     f"{len(feasible)} split(s) predicted to meet both SLOs; worst ratio "
                                     f"{best.worst_ratio:.3g}")
        if require_feasible:
            return None, "no candidate is predicted to meet both SLOs: keep (no violation to trade misses for)"
        best = min(candidates, key=lambda c: (c.worst_ratio, -(c.predicted_throughput or 0.0),
                                              c.distance(allocation)))
        if best.worst_ratio < current.worst_ratio * (1 - self.min_improvement):
            return best.allocation, (f"{format_split(best.allocation)}: no candidate is predicted to meet both "
                                     f"SLOs; lowest predicted worst ratio {best.worst_ratio:.3g} (current "
                                     f"{current.worst_ratio:.3g})")
        return None, (f"no candidate is predicted to meet both SLOs or to lower the worst ratio enough "
                      f"(best {best.worst_ratio:.3g}, current {current.worst_ratio:.3g}): keep")
