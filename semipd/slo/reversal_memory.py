"""`ReversalMemory`: the splits that recently failed one SLO, so that a move does not go back past them.

The controller remembers the latest split that violated TTFT alone and the latest that
violated TPOT alone, for ``seconds``, and moves only strictly between them: after
overshooting from a TTFT violation into a TPOT one, the way back stops short of the split
that failed TTFT. A poor predictor (the seed's heuristic far from the current split) then
closes in on a compliant split instead of swinging across the range.

A remembered split is forgotten early when contradicted: the SLO met with no more SMs for
its phase than when it failed; the other SLO failing on the same side, or one grid step or
less from it, so that no split lies between the two (the older is forgotten: the load needs a
compromise the attainment rule has to find, not a range that admits nothing); or the load no
longer the one it failed under (arrival rate or mean prompt length ``load_ratio`` times
higher or lower): a split that failed a prefill-heavy load says nothing about a decode-heavy
one, and remembering it would keep decode from the SMs the new load needs.

A split past a remembered one that fails *both* SLOs is worse than it: it is remembered as the
bound on its side, and when the two leave no split between them it is the one kept. The way
back to the split that failed one SLO is open, and the move past it again is barred; without
this the controller stayed on the split that failed both, with no candidate left.
"""

from __future__ import annotations

from dataclasses import dataclass

from semipd.slo.observation import Observation


@dataclass(frozen=True)
class _Failed:
    prefill_percentage: float
    time: float
    arrival_rate: float
    prompt_len: float
    both: bool = False
    """It failed both SLOs (past the split that failed the other one alone)."""


class ReversalMemory:
    """The range of prefill shares a move may go to (see the module docstring). Not thread-safe."""

    def __init__(self, seconds: float, load_ratio: float = 2.0) -> None:
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        if not load_ratio > 1:
            raise ValueError(f"load_ratio must be > 1, got {load_ratio!r}")
        self.seconds = float(seconds)
        self.load_ratio = float(load_ratio)
        self._ttft: _Failed | None = None
        self._tpot: _Failed | None = None

    def update(self, now: float, observation: Observation, ratios: dict[str, float],
               violations: dict[str, float], step: float = 0.0) -> tuple[float, float]:
        """Remember what `observation` (with its SLO `ratios` and `violations`) shows and return the
        prefill shares a move may go to, exclusive: (above the split that failed TTFT, below the one
        that failed TPOT). `step` is the grid's step in percent (0: no grid)."""
        x = observation.allocation.prefill_percentage
        rate = observation.arrival_rate
        prompt = observation.metrics.arrival_input_token_rate / rate if rate > 0 else 0.0
        low, high = self._ttft, self._tpot
        if low is not None and self._stale(low, now, rate, prompt,
                                           ratios["ttft"] <= 1.0 and x <= low.prefill_percentage):
            low = None
        if high is not None and self._stale(high, now, rate, prompt,
                                            ratios["tpot"] <= 1.0 and x >= high.prefill_percentage):
            high = None
        if violations.keys() == {"ttft"}:
            low = _Failed(x, now, rate, prompt)
        elif violations.keys() == {"tpot"}:
            high = _Failed(x, now, rate, prompt)
        elif violations.keys() == {"ttft", "tpot"}:  # worse than the split that failed one SLO on the other side
            if low is not None and x > low.prefill_percentage:
                high = _Failed(x, now, rate, prompt, both=True)
            elif high is not None and x < high.prefill_percentage:
                low = _Failed(x, now, rate, prompt, both=True)
        if low is not None and high is not None and high.prefill_percentage - low.prefill_percentage < 2 * step + 1e-9:
            # Contradicted: keep the split that failed both SLOs (the way back to the other one stays
            # open and going past it again is barred), else the newer.
            keep_low = low.both if low.both != high.both else low.time >= high.time
            low, high = (low, None) if keep_low else (None, high)
        self._ttft, self._tpot = low, high
        return (0.0 if low is None else low.prefill_percentage, 100.0 if high is None else high.prefill_percentage)

    def _stale(self, failed: _Failed, now: float, rate: float, prompt: float, met_since: bool) -> bool:
        """Old, met with no more SMs than when it failed, or another load."""
        return met_since or now - failed.time > self.seconds or _differs(failed.arrival_rate, rate, self.load_ratio) \
            or _differs(failed.prompt_len, prompt, self.load_ratio)


def _differs(a: float, b: float, ratio: float) -> bool:
    return a > 0 and b > 0 and max(a, b) / min(a, b) >= ratio
