"""The SLO algorithm: detect misses -> generate candidates -> predict -> pick the split with the most goodput.

Detection (the seed's 2.2, at the configured percentiles): each SLO's ratio is its
percentile over the window divided by its target; it is *missed* above 1 and *violated*
above its violation threshold (the seed's 1.1). An SLO needs ``min_samples`` samples in the
window to be judged. TTFT also reads the prefill queue (see `semipd.slo.observation`): a
queue of at least ``queue_min_waiting`` requests whose Little's-law wait is larger counts,
since the percentile only moves once the queued requests get their first token. A
predictor that `forecasts` (the ``profile`` predictor, whose predictions are absolute) also
counts what it expects of the current split under the window's load, so a jump in the
arrival rate is answered before the window shows the miss.

Candidates (2.3) are the splits within the bounds (`semipd.slo.candidates`; by default
every split of the resource manager's `SMGrid`). Each is predicted (2.4) by the configured
predictor, and so is the current split.

Expected latencies. Candidates are compared in the window's terms: a candidate is expected
to read ``reference x predicted(candidate) / predicted(current)``, where the reference is
what the window reads for the current split (for a forecasting predictor, the larger of
that and its forecast). The seed's heuristic, whose factors are relative to a 50% share,
thus loses its bias toward 50%, and a profile that is off by a constant factor is corrected
by the observation. An SLO the window has no reading for, under a predictor that does not
forecast, counts as met by every split (nothing is known about it).

Selection (2.5): goodput, the rate of requests meeting both SLOs, is what a split is for, so
the split to move to is the one with the highest predicted share of requests meeting both
SLOs (`semipd.slo.attainment`), not the highest raw throughput (the seed's choice: among
splits predicted to meet both SLOs, the fastest). Among the splits within `ATTAINMENT_TIE`
of the highest, those whose expected worst ratio max(TTFT / target, TPOT / target) is within
``park_margin`` (0.8) are preferred (headroom, so the next fluctuation does not bring the miss
back), and among them the smallest move (then the lowest worst ratio): predictions grow less
reliable the farther a split is from the one the window was measured under (the paper
predictor without a fit scales latencies as 1 / SMs and cannot see a queue building at a
split it never ran).

- Exactly one SLO missed (with an SLO violated: exactly one violated): only candidates that
  give more SMs to its phase (with ``monotone_moves``, default): a phase never gets faster
  with fewer SMs, so any other move is a predictor's error. The seed's heuristic, read
  without the anchoring above, made that error (from 72/28 with TTFT missed it predicted
  61/39 met TTFT too, then alternated between the two for ever); the guard stays for
  predictors that err far from the current split.
- Both SLOs missed, or both met: every candidate. The paper gives three answers for both
  missed: its text keeps the partition, its pseudo-code raises prefill, and its prototype
  gives both phases 100% (impossible with disjoint partitions). Keeping forgoes the goodput a
  better split would win; raising prefill regardless starves decode when TPOT is the worse
  miss. Maximising the predicted share of requests meeting both moves SMs toward the phase
  whose misses cost more requests and stops where moving more would cost the other phase as
  many, which is the most a fixed total of SMs can serve.
- When to move. With an SLO violated, any predicted gain in attainment; when no candidate
  changes it (an overload where every split misses), the candidate with the lowest expected
  worst ratio if that is ``min_improvement`` (relative) lower; and with one SLO violated, at
  least the smallest move toward its phase (the violation is observed, a predicted loss is
  not). Otherwise (misses within the threshold, or both SLOs met) a gain of at least
  ``min_attainment_gain`` (absolute): the band between target and threshold
  stays hysteresis, a steady load does not move the split back and forth over predicted
  gains of a fraction of a percent, and a split that loses a few percent of its requests is
  not kept for good because its percentile is just under the threshold.
- Spare SMs go to prefill (``prefer_prefill``, default): with both SLOs met and read, and no
  split predicted to serve more requests, the split with the most prefill SMs among those tied
  for the highest attainment whose expected worst ratio stays within ``park_margin`` (0.8) is
  taken, if it has more prefill SMs than the current one (the controller allows it only after a
  whole window without a move or a load shift, so the evidence is steady); the same preference picks among tied
  candidates when moving for a miss. Decode borrows prefill's idle SMs (the engine's default,
  and the simulator's), so SMs parked with prefill cost decode little while prefill idles and
  give a burst of prompts the capacity it needs at once, whereas SMs parked with decode sit
  idle when decode has little to do. The margin keeps the parked split from hugging the other
  SLO's target, so a small rise in decode's load does not bounce it back.
- Anticipation (``rebalance_above``, ``rebalance_gain``), when spare SMs are not parked with
  prefill (decode cannot borrow them): with both SLOs met and nothing to gain
  in predicted attainment, an SLO at ``rebalance_above`` (0.8) of its target or more moves the
  split by the smallest move that lowers the expected worst ratio by ``rebalance_gain`` (25%,
  relative) at no predicted loss. A load shifting toward decode shows as streaming
  TPOT climbing while TTFT falls; moving before the violation spares the requests already in
  the growing decode batch. With decode borrowing prefill's idle SMs the batch already runs on
  the whole GPU whenever prefill idles, and moving SMs away from prefill ahead of time would
  only shrink its capacity for the next burst of prompts, so parking takes its place.
- The controller may also narrow the range of prefill shares (``prefill_range``) to keep a
  move from going back past a split that recently violated the other SLO.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from semipd.allocation import SMAllocation, SMGrid
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.attainment import Attainment, observed_attainment, predicted_attainment
from semipd.slo.candidates import CandidateBounds, ResourceAllocationCandidate, generate_candidates
from semipd.slo.constraints import SLOConstraints
from semipd.slo.decision import format_split
from semipd.slo.observation import Observation
from semipd.slo.predictors import Prediction, Predictor, create_predictor

ATTAINMENT_TIE = 5e-3
"""Predicted attainments closer than this (half a percentage point) are ties."""


@dataclass(frozen=True)
class Evaluation:
    """One pass of the algorithm over a window."""

    observation: Observation
    violations: dict[str, float]
    """Violated SLOs ("ttft", "tpot") and their ratios to target (see `SLOAlgorithm.detect_slo_violations`)."""
    current: ResourceAllocationCandidate | None
    """The current split as predicted (None when nothing was predicted)."""
    candidates: tuple[ResourceAllocationCandidate, ...]
    choice: SMAllocation | None
    """The split to move to, or None to keep the current one."""
    reason: str
    attainment: Attainment | None = None
    """The window's observed attainment (None when not evaluated)."""


class SLOAlgorithm:
    """Detects SLO misses in a window and picks the split to move to.

    `predictor` is a registered predictor spec (``heuristic``, ``paper``, ``profile:FILE``)
    or a `Predictor`; `predictor_options` are passed to the registered constructor (e.g.
    ``{"profile": perf_model}`` for ``profile``).
    """

    def __init__(self, slo_constraints: SLOConstraints, predictor: str | Predictor = "heuristic",
                 bounds: CandidateBounds | None = None, min_samples: int = 10, queue_min_waiting: int | None = 8,
                 min_improvement: float = 0.05, predictor_options: dict[str, Any] | None = None,
                 monotone_moves: bool = True, min_attainment_gain: float = 0.02, prefer_prefill: bool = True,
                 park_margin: float = 0.8, rebalance_above: float | None = 0.8, rebalance_gain: float = 0.25) -> None:
        if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
            raise ValueError(f"min_samples must be an integer >= 1, got {min_samples!r}")
        if queue_min_waiting is not None and (isinstance(queue_min_waiting, bool)
                                              or not isinstance(queue_min_waiting, int) or queue_min_waiting < 1):
            raise ValueError(f"queue_min_waiting must be an integer >= 1 or None, got {queue_min_waiting!r}")
        if not (isinstance(min_improvement, (int, float)) and 0 <= min_improvement < 1):
            raise ValueError(f"min_improvement must be in [0, 1), got {min_improvement!r}")
        if not (isinstance(min_attainment_gain, (int, float)) and not isinstance(min_attainment_gain, bool)
                and 0 <= min_attainment_gain < 1):
            raise ValueError(f"min_attainment_gain must be in [0, 1), got {min_attainment_gain!r}")
        if not (isinstance(park_margin, (int, float)) and not isinstance(park_margin, bool) and 0 < park_margin <= 1):
            raise ValueError(f"park_margin must be in (0, 1], got {park_margin!r}")
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
        self.min_attainment_gain = float(min_attainment_gain)
        self.prefer_prefill = bool(prefer_prefill)
        self.park_margin = float(park_margin)
        self.rebalance_above = None if rebalance_above is None else float(rebalance_above)
        self.rebalance_gain = float(rebalance_gain)

    def observe(self, metrics: AggregatedMetrics, allocation: SMAllocation) -> Observation:
        """Read a window against the SLOs (does not teach the predictor)."""
        return Observation.from_metrics(metrics, allocation, self.slo_constraints, self.min_samples,
                                        self.queue_min_waiting)

    def slo_ratios(self, observation: Observation) -> dict[str, float]:
        """Each SLO's effective latency over its target: the observation (with the queue), or
        what a forecasting predictor expects of the current split when that is larger."""
        ttft, tpot = self._reference(observation, None)
        slo = self.slo_constraints
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
               prefill_range: tuple[float, float] = (0.0, 100.0), park: bool = True) -> Evaluation:
        """`evaluate` for a window already read with `observe`. Candidates lie strictly inside
        `prefill_range` (prefill percent; the controller's memory of splits that recently violated
        an SLO). `park`: whether spare SMs may be moved to prefill now (the controller allows it once
        the split and the load have been steady for a whole window)."""
        if learn:
            self.predictor.observe(observation)
        allocation = observation.allocation
        here = self.predictor.predict(allocation, observation)
        reference = self._reference(observation, here)
        slo = self.slo_constraints
        ratios = {"ttft": reference[0] / slo.ttft_target_ms, "tpot": reference[1] / slo.tpot_target_ms}
        violations = self.violated(ratios)
        # With an SLO violated, a miss within the other's threshold is hysteresis, not a miss to act on.
        misses = set(violations) or {name for name, ratio in ratios.items() if ratio > 1.0}
        current = self._scored(ResourceAllocationCandidate(allocation.prefill_percentage,
                                                           allocation.decode_percentage),
                               here, here, reference, observation)
        candidates = tuple(
            self._scored(c, self.predictor.predict(c.allocation, observation), here, reference, observation)
            for c in generate_candidates(allocation, self.bounds, sm_grid)
            if self._allowed(c, allocation, misses)
            and prefill_range[0] + 1e-9 < c.prefill_percentage < prefill_range[1] - 1e-9)
        choice, reason = self._select(candidates, current, allocation, violations, misses, park)
        return Evaluation(observation, violations, current, candidates, choice, reason,
                          observed_attainment(observation, slo))

    def _reference(self, observation: Observation, here: Prediction | None) -> tuple[float, float]:
        """(TTFT, TPOT) ms the current split stands at: the window's readings, or what a forecasting
        predictor expects of the current split when that is larger; 0.0 where neither is known."""
        ttft, tpot = observation.ttft_ms, observation.tpot_ms
        if self.predictor.forecasts:
            forecast = here or self.predictor.predict(observation.allocation, observation)
            ttft, tpot = max(ttft, forecast.ttft_ms), max(tpot, forecast.tpot_ms)
        return ttft, tpot

    def _allowed(self, candidate: ResourceAllocationCandidate, allocation: SMAllocation, misses: set[str]) -> bool:
        """With `monotone_moves`, whether `candidate` gives more SMs to the phase that alone misses its SLO."""
        if not self.monotone_moves or len(misses) != 1:
            return True
        if "ttft" in misses:
            return candidate.prefill_percentage > allocation.prefill_percentage + 1e-9
        return candidate.decode_percentage > allocation.decode_percentage + 1e-9

    def _scored(self, candidate: ResourceAllocationCandidate, prediction: Prediction, here: Prediction,
                reference: tuple[float, float], observation: Observation) -> ResourceAllocationCandidate:
        """`candidate` with its prediction, expected latencies and predicted attainment."""
        slo = self.slo_constraints
        expected_ttft = _expected(reference[0], prediction.ttft_ms, here.ttft_ms)
        expected_tpot = _expected(reference[1], prediction.tpot_ms, here.tpot_ms)
        attainment = predicted_attainment(observation, slo, expected_ttft, expected_tpot).both
        return replace(
            candidate,
            predicted_ttft=prediction.ttft_ms,
            predicted_tpot=prediction.tpot_ms,
            predicted_throughput=prediction.throughput,
            expected_ttft=expected_ttft,
            expected_tpot=expected_tpot,
            predicted_attainment=attainment,
            meets_slo=(expected_ttft or 0.0) <= slo.ttft_target_ms and (expected_tpot or 0.0) <= slo.tpot_target_ms,
            worst_ratio=max((expected_ttft or 0.0) / slo.ttft_target_ms, (expected_tpot or 0.0) / slo.tpot_target_ms),
            overall_score=-attainment,
        )

    def _select(self, candidates: tuple[ResourceAllocationCandidate, ...], current: ResourceAllocationCandidate,
                allocation: SMAllocation, violations: dict[str, float], misses: set[str],
                park: bool = True) -> tuple[SMAllocation | None, str]:
        if not candidates:
            if len(misses) == 1 and self.monotone_moves:
                phase = "prefill" if "ttft" in misses else "decode"
                return None, (f"no candidate split within bounds (and the controller's range) gives {phase} "
                              "more SMs: keep")
            return None, "no candidate split within bounds (and the controller's range): keep"
        top = max(_attained(c) for c in candidates)
        near = [c for c in candidates if _attained(c) >= top - ATTAINMENT_TIE]
        roomy = [c for c in near if c.worst_ratio <= self.park_margin]
        if roomy and self.prefer_prefill:
            best = max(roomy, key=lambda c: (c.prefill_percentage, -c.distance(allocation)))
        else:
            best = min(roomy or near, key=lambda c: (c.distance(allocation), c.worst_ratio))
        gain = _attained(best) - _attained(current)
        summary = (f"predicted attainment {_attained(best):.1%} (current {_attained(current):.1%}), expected "
                   f"TTFT {_ms(best.expected_ttft)}, TPOT {_ms(best.expected_tpot)}")
        state = (", ".join(sorted(violations)) + " violated" if violations
                 else " and ".join(sorted(misses)) + " missed" if misses else "SLOs met")
        if violations:
            if gain > ATTAINMENT_TIE:
                return best.allocation, f"{state}; {format_split(best.allocation)}: {summary}"
            one_way = len(violations) == 1 and self.monotone_moves
            even = candidates if one_way else [c for c in candidates
                                               if _attained(c) >= _attained(current) - ATTAINMENT_TIE]
            lowest = min(even, key=lambda c: (c.worst_ratio, c.distance(allocation)), default=None)
            if lowest is not None and lowest.worst_ratio < current.worst_ratio * (1 - self.min_improvement):
                return lowest.allocation, (f"{state}; {format_split(lowest.allocation)}: no split raises the "
                                           f"predicted attainment ({_attained(current):.1%}); lowest expected worst "
                                           f"ratio {lowest.worst_ratio:.3g} (current {current.worst_ratio:.3g})")
            if one_way:
                step = min(candidates, key=lambda c: (c.distance(allocation), c.worst_ratio))
                return step.allocation, (f"{state}; {format_split(step.allocation)}: no split is predicted to raise "
                                         f"attainment ({_attained(current):.1%}) or lower the worst ratio, so the "
                                         f"smallest move toward the violated phase (the violation is observed, the "
                                         f"predicted loss is not)")
            return None, (f"{state}; no split is predicted to raise attainment or lower the worst ratio enough "
                          f"(best {format_split(best.allocation)}: {summary}): keep")
        if gain >= self.min_attainment_gain:
            return best.allocation, f"{state}; {format_split(best.allocation)}: {summary}"
        known = current.expected_ttft is not None and current.expected_tpot is not None
        if (park and self.prefer_prefill and known and not misses and best in roomy and gain >= -ATTAINMENT_TIE
                and best.prefill_percentage > allocation.prefill_percentage + 1e-9):
            return best.allocation, (f"{state}; {format_split(best.allocation)}: as many SMs to prefill as keep the "
                                     f"expected worst ratio within {self.park_margin:.3g} "
                                     f"({best.worst_ratio:.3g}; decode borrows them while prefill idles): {summary}")
        if (not self.prefer_prefill and known and self.rebalance_above is not None
                and current.worst_ratio >= self.rebalance_above):
            enough = [c for c in candidates if _attained(c) >= _attained(current) - ATTAINMENT_TIE
                      and c.worst_ratio <= current.worst_ratio * (1 - self.rebalance_gain)]
            nearest = min(enough, key=lambda c: (c.distance(allocation), c.worst_ratio), default=None)
            if nearest is not None:
                return nearest.allocation, (f"{state}; {format_split(nearest.allocation)}: anticipating, an SLO at "
                                            f"{current.worst_ratio:.3g}x its target; the smallest move that lowers "
                                            f"the expected worst ratio by {self.rebalance_gain:.0%} "
                                            f"({nearest.worst_ratio:.3g}) at no predicted loss: {summary}")
        return None, (f"{state}; no split is predicted to raise attainment by {self.min_attainment_gain:.1%} "
                      f"(best {format_split(best.allocation)}: {summary}): keep")


def _attained(candidate: ResourceAllocationCandidate) -> float:
    return candidate.predicted_attainment if candidate.predicted_attainment is not None else 0.0


def _ms(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.4g} ms"


def _expected(reference: float, predicted: float, predicted_here: float) -> float | None:
    """`predicted` in the window's terms: the reference scaled by predicted / predicted here; None
    without a reference (no reading and no forecast)."""
    if reference <= 0:
        return None
    return reference * predicted / predicted_here
