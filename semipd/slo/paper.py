"""The paper's latency model (Semi-PD section 5), fitted online: the ``paper`` predictor.

With x and y the prefill and decode SM percentages, processing time scales as
l_x = (100 / x) l_100, and with M/M/1 queueing in front of prefill::

    TTFT(x) = a1 / (x - lambda) + b1          TPOT(y) = a2 / y + b2

lambda is the arrival rate in units of x (the share at which prefill exactly keeps up),
so it is modelled as ``lambda = c * rate`` with the window's arrival rate; when some
observation has no arrival rate (<= 1e-6 req/s), ``rate`` is taken as 1 (lambda
constant). The fit keeps the latest observation of each of the last ``history_size``
splits (newer windows of the same split replace older ones), none older than
``max_age_seconds``. TTFT: for each c on a grid below min(x_i / rate_i), a1 and b1 >= 0
by linear least squares on relative error; the c with the smallest error wins, refined
on a finer grid around it. TPOT: a2 and b2 >= 0 the same way.

Predictions are anchored to the current window: the fit gives the shape,
``predicted(x) = observed(x0) * model(x) / model(x0)``, so a load change the fit has not
seen scales every prediction alike and the prediction for the current split equals what
is observed. A latency with no current reading uses the fitted value itself.

Fallback (too few distinct splits, i.e. fewer than ``min_distinct``; a fit with no
dependence on SMs; a relative RMS error above ``max_fit_error``; or a current reading
more than ``max_anchor_ratio`` times off the fit, as after a change of request mix the
history has not caught up with): scale from the current reading, TTFT x0 / x and TPOT
y0 / y (the paper's l_x rule without queueing).

Throughput is the demand (the arrival rate, else the completion rate) the split can
carry: ``demand * min(1, x / lambda)``, since prefill saturates at x = lambda.
Predictions are finite and positive: x - lambda is floored at ``MIN_GAP`` percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from semipd.allocation import SMAllocation
from semipd.slo.observation import Observation
from semipd.slo.predictors import Prediction, Predictor, register_predictor

MIN_GAP = 0.5
"""Smallest x - lambda (percent) a prediction uses, so predictions stay finite."""
_MIN_RATE = 1e-6
"""Arrival rates (req/s) at or below this count as unknown."""
_GRID = 1.0 - np.concatenate(([1.0], np.geomspace(1.0, 1e-3, 63)))  # c / c_max, dense near the pole


@dataclass(frozen=True)
class HyperbolaFit:
    """latency(s) = a / (s - pole) + b, with pole = c * rate; `error` is the relative RMS residual."""

    a: float
    b: float
    c: float
    error: float

    def value(self, share: float, rate: float) -> float:
        return self.a / max(share - self.c * rate, MIN_GAP) + self.b


def fit_nonnegative(u: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a, b >= 0 minimising sum(((a u + b - y) / y)^2) for each row of `u` (or a single vector).

    Returns (a, b, relative RMS error), one entry per row. Where the unconstrained optimum has
    a negative coefficient, the better of the two one-coefficient fits is taken.
    """
    u = np.atleast_2d(u)
    w2 = 1.0 / (y * y)
    suu, su, s1 = (w2 * u * u).sum(axis=1), (w2 * u).sum(axis=1), float(w2.sum())
    suy, sy = (w2 * u * y).sum(axis=1), float((w2 * y).sum())
    det = suu * s1 - su * su
    with np.errstate(divide="ignore", invalid="ignore"):
        free_a = np.where(det > 1e-12 * suu * s1, (suy * s1 - su * sy) / det, -1.0)
        free_b = np.where(det > 1e-12 * suu * s1, (suu * sy - su * suy) / det, -1.0)
        only_a = np.where(suu > 0, suy / suu, 0.0)
    options = [(np.zeros_like(suu), np.full_like(suu, sy / s1)), (only_a, np.zeros_like(suu))]
    feasible = (free_a >= 0) & (free_b >= 0)
    options.append((np.where(feasible, free_a, 0.0), np.where(feasible, free_b, sy / s1)))

    def error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.sqrt(np.mean(((a[:, None] * u + b[:, None] - y) / y) ** 2, axis=1))

    errors = np.stack([error(a, b) for a, b in options])
    pick = np.argmin(errors, axis=0)
    rows = np.arange(u.shape[0])
    a_all = np.stack([a for a, _ in options])
    b_all = np.stack([b for _, b in options])
    return a_all[pick, rows], b_all[pick, rows], errors[pick, rows]


def fit_ttft(shares: np.ndarray, rates: np.ndarray, ttft: np.ndarray) -> HyperbolaFit:
    """TTFT = a1 / (x - c * rate) + b1: c on a grid below min(x / rate), then refined around the best."""
    c_max = float(np.min(shares / rates))

    def best_of(fractions: np.ndarray) -> tuple[int, HyperbolaFit]:
        cs = c_max * fractions
        a, b, err = fit_nonnegative(1.0 / (shares[None, :] - cs[:, None] * rates[None, :]), ttft)
        k = int(np.argmin(err))
        return k, HyperbolaFit(float(a[k]), float(b[k]), float(cs[k]), float(err[k]))

    k, coarse = best_of(_GRID)
    lo, hi = _GRID[max(k - 1, 0)], _GRID[min(k + 1, len(_GRID) - 1)]
    _, fine = best_of(np.linspace(lo, hi, 33))
    return min(coarse, fine, key=lambda fit: fit.error)


def fit_tpot(shares: np.ndarray, tpot: np.ndarray) -> HyperbolaFit:
    """TPOT = a2 / y + b2."""
    a, b, err = fit_nonnegative(1.0 / shares, tpot)
    return HyperbolaFit(float(a[0]), float(b[0]), 0.0, float(err[0]))


_Point = tuple[float, float, float, float]  # share, rate, latency ms, time


@register_predictor("paper")
class PaperPredictor(Predictor):
    """Eq. 1-4 of the paper with a1, b1, lambda, a2, b2 fitted online (see the module docstring)."""

    name = "paper"

    def __init__(self, history_size: int = 8, min_distinct: int = 3, max_fit_error: float = 0.25,
                 max_age_seconds: float = 600.0, max_anchor_ratio: float = 2.0) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 3:
            raise ValueError(f"history_size must be an integer >= 3, got {history_size!r}")
        if isinstance(min_distinct, bool) or not isinstance(min_distinct, int) or not 2 <= min_distinct <= history_size:
            raise ValueError(f"min_distinct must be an integer in [2, history_size], got {min_distinct!r}")
        for name, value, low in (("max_fit_error", max_fit_error, 0.0), ("max_age_seconds", max_age_seconds, 0.0),
                                 ("max_anchor_ratio", max_anchor_ratio, 1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > low:
                raise ValueError(f"{name} must be a number > {low:g}, got {value!r}")
        self.history_size = history_size
        self.min_distinct = min_distinct
        self.max_fit_error = float(max_fit_error)
        self.max_age_seconds = float(max_age_seconds)
        self.max_anchor_ratio = float(max_anchor_ratio)
        # split -> point; insertion order is recency.
        self._ttft_points: dict[tuple[float, float], _Point] = {}
        self._tpot_points: dict[tuple[float, float], _Point] = {}
        self._ttft_fit: HyperbolaFit | None = None
        self._tpot_fit: HyperbolaFit | None = None
        self._rate_known = False

    def observe(self, observation: Observation) -> None:
        alloc, now = observation.allocation, observation.time
        key = (round(alloc.prefill_percentage, 6), round(alloc.decode_percentage, 6))
        if observation.ttft_ms > 0:
            self._remember(self._ttft_points, key,
                           (alloc.prefill_percentage, observation.arrival_rate, observation.ttft_ms, now))
        if observation.tpot_ms > 0:
            self._remember(self._tpot_points, key, (alloc.decode_percentage, 0.0, observation.tpot_ms, now))
        for points in (self._ttft_points, self._tpot_points):
            for stale in [k for k, point in points.items() if point[3] < now - self.max_age_seconds]:
                del points[stale]
        self._ttft_fit = self._fit(self._ttft_points, ttft=True)
        self._tpot_fit = self._fit(self._tpot_points, ttft=False)

    def _remember(self, points: dict[tuple[float, float], _Point], key: tuple[float, float], point: _Point) -> None:
        points.pop(key, None)
        points[key] = point
        while len(points) > self.history_size:
            del points[next(iter(points))]

    def _fit(self, points: dict[tuple[float, float], _Point], ttft: bool) -> HyperbolaFit | None:
        if not points:
            return None
        data = np.array(list(points.values()), dtype=float)
        shares, rates, latency = data[:, 0], data[:, 1], data[:, 2]
        if ttft:
            self._rate_known = bool(np.all(rates > _MIN_RATE))
        if len(np.unique(np.round(shares, 6))) < self.min_distinct:
            return None
        if ttft:
            fit = fit_ttft(shares, rates if self._rate_known else np.ones_like(rates), latency)
        else:
            fit = fit_tpot(shares, latency)
        if fit.a <= 0 or fit.error > self.max_fit_error:
            return None
        return fit

    def _current_fit(self, fit: HyperbolaFit | None, share0: float, rate: float,
                     observed: float) -> HyperbolaFit | None:
        """`fit`, unless the current reading is more than `max_anchor_ratio` off it (a load the history
        has not seen, e.g. another request mix)."""
        if fit is None or observed <= 0:
            return fit
        ratio = observed / fit.value(share0, rate)
        return fit if 1.0 / self.max_anchor_ratio <= ratio <= self.max_anchor_ratio else None

    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        x, x0 = allocation.prefill_percentage, observation.allocation.prefill_percentage
        y, y0 = allocation.decode_percentage, observation.allocation.decode_percentage
        rate = observation.arrival_rate if self._rate_known else 1.0
        demand = observation.arrival_rate if observation.arrival_rate > 0 else observation.request_throughput
        ttft_fit = self._current_fit(self._ttft_fit, x0, rate, observation.ttft_ms)
        tpot_fit = self._current_fit(self._tpot_fit, y0, 0.0, observation.tpot_ms)
        if ttft_fit is None:
            ttft, throughput = observation.base_ttft_ms * x0 / x, demand
        else:
            ttft = _anchored(ttft_fit, x, x0, rate, observation.ttft_ms)
            pole = ttft_fit.c * rate
            throughput = demand * min(1.0, x / pole) if pole > 0 else demand
        if tpot_fit is None:
            tpot = observation.base_tpot_ms * y0 / y
        else:
            tpot = _anchored(tpot_fit, y, y0, 0.0, observation.tpot_ms)
        return Prediction(ttft, tpot, throughput)

    def describe(self) -> dict[str, Any]:
        def fit_dict(fit: HyperbolaFit | None) -> dict[str, float] | None:
            return None if fit is None else {"a": fit.a, "b": fit.b, "c": fit.c, "error": fit.error}

        return {
            "name": self.name,
            "ttft_points": len(self._ttft_points),
            "tpot_points": len(self._tpot_points),
            "ttft_fit": fit_dict(self._ttft_fit),
            "tpot_fit": fit_dict(self._tpot_fit),
            "lambda_per_rate": self._rate_known,
        }


def _anchored(fit: HyperbolaFit, share: float, share0: float, rate: float, observed: float) -> float:
    """The fitted shape scaled to pass through the current reading (or the fit itself without one)."""
    value = fit.value(share, rate)
    if observed > 0:
        value *= observed / fit.value(share0, rate)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"latency model gave {value} at share {share}")
    return value
