"""`Decision`: the record of one controller cycle, kept in a bounded log.

A cycle that evaluated candidates carries its `prediction` for the split it leaves in force
(the one it moved to, or the one it kept): the TTFT and TPOT it expects the window to read
and the share of requests it expects to meet both SLOs. Once a window of that split alone
has been read, the controller fills in the `outcome`: what the window read, next to the
prediction (`semipd.slo.controller`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from semipd.allocation import SMAllocation
from semipd.slo.candidates import ResourceAllocationCandidate


def format_split(allocation: SMAllocation) -> str:
    """``72.7/27.3``: the shares rounded to a tenth of a percent (the grid's splits are not round)."""
    return f"{allocation.prefill_percentage:.1f}/{allocation.decode_percentage:.1f}"


ACTIONS = ("keep", "adjust", "hold", "error")
"""keep: evaluated, no move. adjust: a reallocation was requested (see `success`).
hold: not evaluated (cooldown, or the window still holds samples of the previous split).
error: the cycle could not read its inputs or evaluate them."""


@dataclass(frozen=True)
class Decision:
    """One controller cycle: what it saw, what it considered, what it did and how that went."""

    time: float
    """Clock seconds of the cycle."""
    action: str
    """One of `ACTIONS`."""
    reason: str
    allocation: SMAllocation | None = None
    """The split in force when the cycle began (None when it could not be read)."""
    observed: dict[str, float | int] = field(default_factory=dict)
    """Summary of the window (`Observation.summary()`)."""
    violations: dict[str, float] = field(default_factory=dict)
    current: ResourceAllocationCandidate | None = None
    """The current split with its predictions, when candidates were evaluated."""
    candidates: tuple[ResourceAllocationCandidate, ...] = ()
    choice: SMAllocation | None = None
    """The split requested (``adjust``)."""
    success: bool | None = None
    """Whether the resource manager accepted `choice`; None when nothing was requested."""
    error: str | None = None
    prediction: dict[str, Any] | None = None
    """For the split left in force: ``allocation``, ``ttft_ms`` and ``tpot_ms`` (expected at the SLO
    percentiles), ``attainment`` (expected share of requests meeting both SLOs), and the predictor's
    own ``predicted_ttft_ms`` / ``predicted_tpot_ms``."""
    outcome: dict[str, Any] | None = None
    """What followed, once checked: ``time``, the observed ``ttft_ms``, ``tpot_ms`` and ``attainment``,
    and ``ttft_ratio`` / ``tpot_ratio`` (observed / expected) and ``attainment_error`` (observed -
    expected). None until a window of the predicted split alone was read."""

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action must be one of {ACTIONS}, got {self.action!r}")

    @property
    def label(self) -> str:
        """Short form for timelines: ``keep``, ``hold``, ``error``, ``72.7/27.3 -> 60.6/39.4`` (``... failed``)."""
        if self.action != "adjust" or self.choice is None:
            return self.action
        before = "?" if self.allocation is None else format_split(self.allocation)
        return f"{before} -> {format_split(self.choice)}" + ("" if self.success else " failed")

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return {
            "time": self.time,
            "action": self.action,
            "label": self.label,
            "reason": self.reason,
            "allocation": None if self.allocation is None else self.allocation.as_dict(),
            "observed": dict(self.observed),
            "violations": dict(self.violations),
            "current": None if self.current is None else self.current.as_dict(),
            "candidates": [c.as_dict() for c in self.candidates],
            "choice": None if self.choice is None else self.choice.as_dict(),
            "success": self.success,
            "error": self.error,
            "prediction": None if self.prediction is None else dict(self.prediction),
            "outcome": None if self.outcome is None else dict(self.outcome),
        }
