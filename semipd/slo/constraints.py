"""`SLOConstraints`: the latency targets the controller steers toward (the seed's section 2.1)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class SLOConstraints:
    """Latency targets and when a miss counts as a violation.

    A target is met when the observed percentile (``ttft_percentile`` of TTFT,
    ``tpot_percentile`` of TPOT) is at most the target. A violation is declared when the
    percentile exceeds ``target * violation_threshold``: the band between target and
    threshold is hysteresis, so an allocation that was chosen because it is predicted to
    meet the target is not abandoned for a small miss.
    """

    ttft_target_ms: float = 100.0
    """Time to first token target, milliseconds."""
    tpot_target_ms: float = 50.0
    """Time per output token target, milliseconds."""
    ttft_percentile: float = 95.0
    """TTFT percentile compared with the target, in (0, 100]."""
    tpot_percentile: float = 95.0
    """TPOT percentile compared with the target, in (0, 100]."""
    ttft_violation_threshold: float = 1.1
    """percentile / target above which TTFT is violated (>= 1)."""
    tpot_violation_threshold: float = 1.1
    """percentile / target above which TPOT is violated (>= 1)."""

    def __post_init__(self) -> None:
        for name in ("ttft_target_ms", "tpot_target_ms"):
            if _check_number(name, getattr(self, name)) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ttft_percentile", "tpot_percentile"):
            if not 0 < _check_number(name, getattr(self, name)) <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {getattr(self, name)}")
        for name in ("ttft_violation_threshold", "tpot_violation_threshold"):
            if _check_number(name, getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, float]:
        return asdict(self)
