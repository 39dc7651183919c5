"""`PredictionLedger`: each decision's prediction, checked against what followed.

A decision that evaluated candidates predicts, for the split it leaves in force, the TTFT and
TPOT the window will read at the SLO percentiles and the share of requests that will meet
both SLOs. The ledger keeps the latest such decision and, at the first later cycle whose
window holds only samples of that split (the controller knows when), records the outcome:
observed / expected latency ratios and observed - expected attainment. A newer decision
replaces one still waiting (its window never came: the split moved again first). The
running errors, per kind of decision (``adjust``: a move, ``keep``: the split kept), are what
`summary` reports, so the status shows how far the predictor can be trusted.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from semipd.allocation import SMAllocation
from semipd.slo.attainment import Attainment
from semipd.slo.candidates import ResourceAllocationCandidate
from semipd.slo.decision import Decision
from semipd.slo.observation import Observation

_KINDS = ("adjust", "keep")


def prediction_of(candidate: ResourceAllocationCandidate) -> dict[str, Any]:
    """The `Decision.prediction` of a predicted candidate."""
    return {
        "allocation": candidate.allocation.as_dict(),
        "ttft_ms": candidate.expected_ttft,
        "tpot_ms": candidate.expected_tpot,
        "attainment": candidate.predicted_attainment,
        "predicted_ttft_ms": candidate.predicted_ttft,
        "predicted_tpot_ms": candidate.predicted_tpot,
    }


class PredictionLedger:
    """The decision waiting for its check, and the running errors of those checked. Not thread-safe:
    the controller calls it from its cycle only."""

    def __init__(self) -> None:
        self._waiting: Decision | None = None
        self._counts = dict.fromkeys(_KINDS, 0)
        self._superseded = 0
        self._errors: dict[str, dict[str, float]] = {
            kind: {"ttft": 0.0, "tpot": 0.0, "attainment": 0.0, "ttft_n": 0, "tpot_n": 0} for kind in _KINDS}

    def expect(self, decision: Decision) -> None:
        """Wait for the check of `decision` (when it made a prediction that is in force)."""
        if decision.prediction is None or (decision.action == "adjust" and not decision.success):
            return
        if self._waiting is not None:
            self._superseded += 1
        self._waiting = decision

    def check(self, now: float, allocation: SMAllocation, observation: Observation,
              attainment: Attainment) -> tuple[Decision, Decision] | None:
        """At a cycle whose window holds only samples of `allocation`: (the waiting decision, the same
        with its outcome) when it predicted `allocation`, else None. A waiting decision for another
        split is dropped (the split moved again before its window came)."""
        waiting = self._waiting
        if waiting is None or now <= waiting.time:
            return None
        predicted = waiting.prediction
        assert predicted is not None
        self._waiting = None
        if SMAllocation(**predicted["allocation"]) != allocation:
            self._superseded += 1
            return None
        outcome: dict[str, Any] = {"time": now, "ttft_ms": observation.ttft_ms, "tpot_ms": observation.tpot_ms,
                                   "attainment": attainment.both,
                                   "ttft_ratio": _ratio(observation.ttft_ms, predicted["ttft_ms"]),
                                   "tpot_ratio": _ratio(observation.tpot_ms, predicted["tpot_ms"]),
                                   "attainment_error": attainment.both - predicted["attainment"]}
        kind = "adjust" if waiting.action == "adjust" else "keep"
        errors = self._errors[kind]
        self._counts[kind] += 1
        errors["attainment"] += abs(outcome["attainment_error"])
        for slo in ("ttft", "tpot"):
            if outcome[f"{slo}_ratio"] is not None:
                errors[slo] += abs(math.log(outcome[f"{slo}_ratio"]))
                errors[f"{slo}_n"] += 1
        return waiting, replace(waiting, outcome=outcome)

    def summary(self) -> dict[str, Any]:
        """Per kind of decision: predictions checked, and their mean errors: ``attainment_abs_error``
        (absolute share), ``ttft_abs_log_ratio`` / ``tpot_abs_log_ratio`` (|ln(observed / expected)|:
        0.1 is about 10% off); plus ``superseded``, predictions whose split moved before their check."""
        out: dict[str, Any] = {"superseded": self._superseded}
        for kind in _KINDS:
            n, errors = self._counts[kind], self._errors[kind]
            out[kind] = {
                "checked": n,
                "attainment_abs_error": errors["attainment"] / n if n else None,
                "ttft_abs_log_ratio": errors["ttft"] / errors["ttft_n"] if errors["ttft_n"] else None,
                "tpot_abs_log_ratio": errors["tpot"] / errors["tpot_n"] if errors["tpot_n"] else None,
            }
        return out


def _ratio(observed: float, expected: float | None) -> float | None:
    if expected is None or expected <= 0 or observed <= 0:
        return None
    return observed / expected
