"""`SimulatedResourceManager`: the `ResourceManager` of the simulated GPU.

It behaves like the green-context manager on virtual time: a reallocation is validated
against the `SMGrid`, becomes due ``switch_delay_s`` after the request (0 models green
contexts, whose partitions are pre-created; seconds model MPS process rotation, where a
standby worker must start at the new percentage), and each phase moves to it at its next
iteration boundary once it is due. An idle phase is at a boundary, so it moves when the
switch falls due (the executor schedules an event for that). In-flight work finishes on
the SMs it started on.
"""

from __future__ import annotations

from typing import Any

from semipd.allocation import SMAllocation, SMGrid
from semipd.clock import Clock

PHASES = ("prefill", "decode")


class SimulatedResourceManager:
    """Target allocation plus what each phase runs on now. Single-threaded (simulator)."""

    def __init__(self, sm_grid: SMGrid, initial_sm_allocation: SMAllocation, clock: Clock,
                 switch_delay_s: float = 0.0) -> None:
        if not switch_delay_s >= 0:
            raise ValueError(f"switch_delay_s must be >= 0, got {switch_delay_s}")
        self.grid = sm_grid
        self.clock = clock
        self.switch_delay_s = float(switch_delay_s)
        self._target = sm_grid.prefill_sms(initial_sm_allocation)
        self._due = clock.now()
        self._requested_at = self._due
        self._phase_sms = {"prefill": self._target, "decode": sm_grid.total_sms - self._target}
        self._acked = dict.fromkeys(PHASES, True)
        self.num_reallocations = 0
        self.switch_latencies: list[float] = []
        """Seconds from each request to the moment both phases ran on the new split."""
        self.history: list[tuple[float, SMAllocation]] = [(self._due, self.grid.allocation(self._target))]
        """(time requested, allocation) for the initial split and every accepted change."""
        self.running = False

    # -- ResourceManager protocol --------------------------------------------------------
    def start(self) -> None:
        self.running = True

    def stop(self) -> None:
        self.running = False

    def request_sm_reallocation(self, new_allocation: SMAllocation) -> bool:
        """Schedule a switch to `new_allocation`; raises ValueError for a split off the grid.
        A request for the current target is accepted and changes nothing; a new request
        while one is pending replaces it (its delay restarts)."""
        p = self.grid.prefill_sms(new_allocation)
        if p == self._target:
            return True
        now = self.clock.now()
        self._target = p
        self._requested_at = now
        self._due = now + self.switch_delay_s
        self._acked = dict.fromkeys(PHASES, False)
        self.num_reallocations += 1
        self.history.append((now, self.grid.allocation(p)))
        return True

    def get_status(self) -> dict[str, Any]:
        """``current_sm_allocation`` is the latest accepted split (as the green-context manager
        reports it); ``prefill_sms``/``decode_sms`` are what each phase runs on right now."""
        return {
            "backend": "simulated",
            "running": self.running,
            "current_sm_allocation": self.grid.allocation(self._target).as_dict(),
            "prefill_sms": self._phase_sms["prefill"],
            "decode_sms": self._phase_sms["decode"],
            "sm_grid": self.grid.as_dict(),
            "num_reallocations": self.num_reallocations,
            "switch_delay_s": self.switch_delay_s,
            "switch_pending_for": [ph for ph in PHASES if not self._acked[ph]],
        }

    # -- executor side ----------------------------------------------------------------------
    @property
    def target(self) -> SMAllocation:
        return self.grid.allocation(self._target)

    def pending_due_time(self) -> float | None:
        """When the pending switch falls due, or None if every phase runs the target."""
        return None if all(self._acked.values()) else self._due

    def phase_sms(self, phase: str) -> int:
        """SMs `phase` runs on now (the executor calls this only at the phase's iteration boundaries).
        Moves the phase to the target split if a switch is due."""
        if not self._acked[phase] and self.clock.now() >= self._due:
            self._acked[phase] = True
            self._phase_sms[phase] = self._target if phase == "prefill" else self.grid.total_sms - self._target
            if all(self._acked.values()):
                self.switch_latencies.append(self.clock.now() - self._requested_at)
        return self._phase_sms[phase]

    def current_sms(self, phase: str) -> int:
        """SMs `phase` runs on, without moving it."""
        return self._phase_sms[phase]
