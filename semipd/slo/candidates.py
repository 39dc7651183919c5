"""Allocation candidates around the current split (the seed's section 2.3).

Without an `SMGrid` the candidates are the seed's: prefill and decode shares each moved
by -N..+N ``adjustment_step`` percent independently (so their sum may fall below 100),
kept within the bounds. With a grid (the resource manager's ``get_status()["sm_grid"]``)
decode always gets the SMs prefill does not take, and the candidates are the grid's
realisable splits -N..+N grid steps from the current one, so a backend that splits in
8-SM steps is only ever asked for splits it can make.

The bounds default to the whole range: on a grid, every split it can realise (on an H100,
16..116 prefill SMs); the seed's 20..80% stays available as explicit bounds. A split past
80% prefill is where a prefill-heavy load is best served (decode needs few SMs when its batch
is small), so a default cap there left the controller one step short of compliance.

N is ``max_steps``. The seed uses 2; by default (None) every split within the bounds is a
candidate, so one decision can make the move a violation needs instead of creeping 2 steps
per decision and waiting for fresh samples after each: the size of the move follows the
predictions (`semipd.slo.algorithm`), and the controller's guards (monotone moves, the
memory of splits that violated the other SLO) keep a poor predictor from swinging across
the range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from semipd.allocation import SMAllocation, SMGrid


@dataclass(frozen=True)
class CandidateBounds:
    """Where candidates may lie and how far one decision may move."""

    min_prefill_percentage: float = 0.0
    """Smallest prefill share a candidate may have, percent (a candidate always gives each phase some)."""
    max_prefill_percentage: float = 100.0
    """Largest prefill share a candidate may have, percent."""
    min_decode_percentage: float = 0.0
    """Smallest decode share a candidate may have, percent."""
    max_decode_percentage: float = 100.0
    """Largest decode share a candidate may have, percent."""
    adjustment_step: float = 10.0
    """One step in percent of the device (without a grid; a grid moves by its granularity)."""
    max_steps: int | None = None
    """Candidates lie 1..max_steps steps from the current split on each axis (the seed: 2);
    None: anywhere within the bounds."""

    def __post_init__(self) -> None:
        for phase in ("prefill", "decode"):
            lo, hi = f"min_{phase}_percentage", f"max_{phase}_percentage"
            for name in (lo, hi):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                    raise ValueError(f"{name} must be a number in [0, 100], got {value!r}")
            if getattr(self, hi) <= 0:
                raise ValueError(f"{hi} must be > 0, got {getattr(self, hi)!r}")
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must be <= {hi}, got {getattr(self, lo)} > {getattr(self, hi)}")
        step = self.adjustment_step
        if isinstance(step, bool) or not isinstance(step, (int, float)) or not 0 < step <= 100:
            raise ValueError(f"adjustment_step must be a number in (0, 100], got {step!r}")
        steps = self.max_steps
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
            raise ValueError(f"max_steps must be None or an integer >= 1, got {steps!r}")

    def admits(self, prefill: float, decode: float) -> bool:
        """Whether a split lies inside the bounds and gives each phase some SMs (a tolerance absorbs
        float steps)."""
        eps = 1e-9
        return (prefill > eps and decode > eps
                and self.min_prefill_percentage - eps <= prefill <= self.max_prefill_percentage + eps
                and self.min_decode_percentage - eps <= decode <= self.max_decode_percentage + eps
                and prefill + decode <= 100 + eps)


@dataclass(frozen=True)
class ResourceAllocationCandidate:
    """One split under consideration, with what the predictor expects of it.

    The prediction fields are None until predicted. ``predicted_ttft``, ``predicted_tpot`` and
    ``predicted_throughput`` are the predictor's answer; ``expected_ttft`` and ``expected_tpot`` the
    latencies the window is expected to read under this split (the predictor's answer relative to
    its answer for the current split, anchored to what the window reads; see `semipd.slo.algorithm`);
    ``predicted_attainment`` the share of requests expected to meet both SLOs. ``meets_slo`` and
    ``worst_ratio`` (max(expected TTFT / target, expected TPOT / target)) follow the expected
    latencies. ``overall_score`` is lower-is-better as in the seed, but ranks by attainment:
    ``-predicted_attainment`` (the seed: ``-predicted_throughput`` when both SLOs are met).
    """

    prefill_percentage: float
    decode_percentage: float
    predicted_ttft: float | None = None
    predicted_tpot: float | None = None
    predicted_throughput: float | None = None
    meets_slo: bool = False
    worst_ratio: float = math.inf
    overall_score: float = math.inf
    expected_ttft: float | None = None
    expected_tpot: float | None = None
    predicted_attainment: float | None = None

    @property
    def allocation(self) -> SMAllocation:
        return SMAllocation(self.prefill_percentage, self.decode_percentage)

    def distance(self, other: SMAllocation) -> float:
        """Total share moved to reach this candidate from `other`, percent."""
        return abs(self.prefill_percentage - other.prefill_percentage) + abs(
            self.decode_percentage - other.decode_percentage)

    def as_dict(self) -> dict[str, float | bool | None]:
        return {
            "prefill_percentage": self.prefill_percentage,
            "decode_percentage": self.decode_percentage,
            "predicted_ttft": self.predicted_ttft,
            "predicted_tpot": self.predicted_tpot,
            "predicted_throughput": self.predicted_throughput,
            "meets_slo": self.meets_slo,
            "worst_ratio": self.worst_ratio,
            "expected_ttft": self.expected_ttft,
            "expected_tpot": self.expected_tpot,
            "predicted_attainment": self.predicted_attainment,
        }


def generate_candidates(current: SMAllocation, bounds: CandidateBounds,
                        grid: SMGrid | None = None) -> list[ResourceAllocationCandidate]:
    """Neighbours of `current` within `bounds` (never `current` itself), unpredicted."""
    if grid is not None:
        return _grid_candidates(current, bounds, grid)
    steps = bounds.max_steps if bounds.max_steps is not None else math.ceil(100.0 / bounds.adjustment_step)
    deltas = range(-steps, steps + 1)
    candidates = []
    for prefill_delta in deltas:
        for decode_delta in deltas:
            if prefill_delta == 0 and decode_delta == 0:
                continue
            prefill = current.prefill_percentage + prefill_delta * bounds.adjustment_step
            decode = current.decode_percentage + decode_delta * bounds.adjustment_step
            if bounds.admits(prefill, decode):
                candidates.append(ResourceAllocationCandidate(prefill, min(decode, 100.0 - prefill)))
    return candidates


def _grid_candidates(current: SMAllocation, bounds: CandidateBounds,
                     grid: SMGrid) -> list[ResourceAllocationCandidate]:
    choices = grid.prefill_sm_choices()
    nearest = grid.nearest(current)
    here = choices.index(grid.prefill_sms(nearest))
    # An off-grid current split (set before the grid was known) also gets its nearest realisable one.
    off_grid = not _same(nearest, current)
    candidates = []
    steps = bounds.max_steps if bounds.max_steps is not None else len(choices)
    for delta in range(-steps, steps + 1):
        index = here + delta
        if (delta == 0 and not off_grid) or not 0 <= index < len(choices):
            continue
        alloc = grid.allocation(choices[index])
        if bounds.admits(alloc.prefill_percentage, alloc.decode_percentage):
            candidates.append(ResourceAllocationCandidate(alloc.prefill_percentage, alloc.decode_percentage))
    return candidates


def _same(a: SMAllocation, b: SMAllocation) -> bool:
    return (abs(a.prefill_percentage - b.prefill_percentage) < 1e-6
            and abs(a.decode_percentage - b.decode_percentage) < 1e-6)
