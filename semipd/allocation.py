"""SM allocations and the `ResourceManager` protocol that realises them.

An `SMAllocation` says which share of the GPU's SMs each phase gets, in percent.
A `ResourceManager` (green contexts, MPS process rotation, the simulator, or the
in-memory one below) applies it. Backends that can only realise some splits (e.g.
multiples of 8 SMs on a 132-SM Hopper) describe them with an `SMGrid`, which the
controller uses so that it only proposes splits the backend can realise.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

_EPS = 1e-6

HOPPER_SPLIT_GRANULARITY = 8
"""SMs per split step of green contexts on compute capability 9.x (H100, H200)."""
HOPPER_MIN_SMS = 16
"""Fewest SMs either side of a split gets: the driver can split off 8, but on an H100 cuBLAS GEMMs failed
(CUBLAS_STATUS_EXECUTION_FAILED) on the 12-SM remainder of a 120-SM group. The engine's partitions and the
simulated GPU both use this grid, so the controller reaches the same splits in both: 16..116 prefill SMs
of an H100's 132."""


@dataclass(frozen=True)
class SMAllocation:
    """Share of the SMs given to each phase, in percent of the device.

    The phases run on disjoint SMs, so the two shares add up to at most 100.
    """

    prefill_percentage: float
    decode_percentage: float

    def __post_init__(self) -> None:
        for name in ("prefill_percentage", "decode_percentage"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not 0 < value <= 100:
                raise ValueError(f"{name} must be in (0, 100], got {value}")
        if self.prefill_percentage + self.decode_percentage > 100 + _EPS:
            raise ValueError(
                "prefill_percentage + decode_percentage must be <= 100, got "
                f"{self.prefill_percentage} + {self.decode_percentage}"
            )

    def as_dict(self) -> dict[str, float]:
        """The seed's `current_sm_allocation` dict."""
        return {"prefill_percentage": self.prefill_percentage, "decode_percentage": self.decode_percentage}

    def __str__(self) -> str:
        return f"{self.prefill_percentage:g}/{self.decode_percentage:g}"


@dataclass(frozen=True)
class SMGrid:
    """The splits a backend can realise: `total_sms` SMs in steps of `granularity`,
    at least `min_sms` on each side. Prefill gets `p` SMs and decode the rest."""

    total_sms: int = 100
    granularity: int = 1
    min_sms: int = 1

    def __post_init__(self) -> None:
        if self.total_sms < 2:
            raise ValueError(f"total_sms must be >= 2, got {self.total_sms}")
        if self.granularity < 1:
            raise ValueError(f"granularity must be >= 1, got {self.granularity}")
        if self.min_sms < 1:
            raise ValueError(f"min_sms must be >= 1, got {self.min_sms}")
        if not self.prefill_sm_choices():
            raise ValueError("no split satisfies total_sms, granularity and min_sms")

    def prefill_sm_choices(self) -> list[int]:
        """Prefill SM counts that leave decode at least `min_sms` SMs."""
        first = -(-self.min_sms // self.granularity) * self.granularity
        return [p for p in range(first, self.total_sms, self.granularity) if self.total_sms - p >= self.min_sms]

    def allocation(self, prefill_sms: int) -> SMAllocation:
        """The allocation giving `prefill_sms` SMs to prefill and the rest to decode."""
        if prefill_sms not in self.prefill_sm_choices():
            raise ValueError(f"prefill_sms={prefill_sms} is not realisable on {self}")
        p = 100.0 * prefill_sms / self.total_sms
        return SMAllocation(p, 100.0 - p)

    def allocations(self) -> list[SMAllocation]:
        """Every realisable allocation, by increasing prefill share."""
        return [self.allocation(p) for p in self.prefill_sm_choices()]

    def prefill_sms(self, alloc: SMAllocation) -> int:
        """SM count of prefill for `alloc`; raises ValueError if it is not on the grid."""
        sms = alloc.prefill_percentage * self.total_sms / 100.0
        best = round(sms)
        if abs(sms - best) > 1e-3 or best not in self.prefill_sm_choices():
            raise ValueError(f"allocation {alloc} is not realisable on {self}; choose from "
                             f"prefill SMs {self.prefill_sm_choices()}")
        if abs(alloc.decode_percentage - (100.0 - alloc.prefill_percentage)) > 1e-3:
            raise ValueError(f"allocation {alloc} must give decode every SM prefill does not take")
        return best

    def nearest(self, alloc: SMAllocation) -> SMAllocation:
        """The realisable allocation whose prefill share is closest to `alloc`'s."""
        target = alloc.prefill_percentage * self.total_sms / 100.0
        return self.allocation(min(self.prefill_sm_choices(), key=lambda p: (abs(p - target), p)))

    def as_dict(self) -> dict[str, int]:
        return {"total_sms": self.total_sms, "granularity": self.granularity, "min_sms": self.min_sms}


@runtime_checkable
class ResourceManager(Protocol):
    """Applies SM allocations. `get_status()` returns a dict with at least
    ``current_sm_allocation`` (the seed's ``{"prefill_percentage", "decode_percentage"}``)
    and, when the backend has one, ``sm_grid`` (an `SMGrid.as_dict()`)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def get_status(self) -> dict[str, Any]: ...

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        """Ask for `new_allocation`; True if accepted (it may take effect later)."""
        ...


class InMemoryResourceManager:
    """A `ResourceManager` that applies allocations at once and remembers them (tests, dry runs)."""

    def __init__(self, initial_sm_allocation: SMAllocation | None = None, sm_grid: SMGrid | None = None) -> None:
        self._grid = sm_grid
        alloc = initial_sm_allocation or SMAllocation(50, 50)
        if sm_grid is not None:
            sm_grid.prefill_sms(alloc)
        self._alloc = alloc
        self._lock = threading.Lock()
        self.running = False
        self.history: list[SMAllocation] = [alloc]

    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def get_status(self) -> dict[str, Any]:
        with self._lock:
            status: dict[str, Any] = {
                "running": self.running,
                "current_sm_allocation": self._alloc.as_dict(),
                "num_reallocations": len(self.history) - 1,
            }
        if self._grid is not None:
            status["sm_grid"] = self._grid.as_dict()
        return status

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        if self._grid is not None:
            self._grid.prefill_sms(new_allocation)
        with self._lock:
            self._alloc = new_allocation
            self.history.append(new_allocation)
        return True
