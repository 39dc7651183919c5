"""The paper's latency model (Semi-PD section 5), fitted online: the ``paper`` predictor.

With x and y the prefill and decode SM percentages, processing time scales as
l_x = (100 / x) l_100, and with M/M/1 queueing in front of prefill::

    TTFT(x) = a1 / (x - lambda) + b1          TPOT(y) = a2 / y + b2

lambda is the arrival rate in units of x (the share at which prefill exactly keeps up),
so it is modelled as ``lambda = c * rate`` with the window's arrival rate; when some
observation has no arrival rate (<= 1e-6 req/s), ``rate`` is taken as 1 (lambda constant). The fit keeps
the latest observation of each of the last ``history_size`` splits (newer windows of the
same split replace older ones). TTFT: for each c on a grid below min(x_i / rate_i),
a1 and b1 >= 0 by linear least squares on relative error; the c with the smallest error
wins, refined on a finer grid around it. TPOT: a2 and b2 >= 0 the same way.

Predictions are anchored to the current window: the fit gives the shape,
``predicted(x) = observed(x0) * model(x) / model(x0)``, so a load change the fit has not
seen scales every prediction alike and the prediction for the current split equals what
is observed. A latency with no current reading uses the fitted value itself.

Fallback (too few distinct splits, i.e. fewer than ``min_distinct``; a fit with no
dependence on SMs; or a relative RMS error above ``max_fit_error``): scale from the
current reading, TTFT x0 / x and TPOT y0 / y (the paper's l_x rule without queueing).

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


def fit_nonnegative(u: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """a, b >= 0 minimising sum(((a u + b - y) / y)^2); returns (a, b, relative RMS error)."""
    w2 = 1.0 / (y * y)
    suu, su, s1 = float(np.sum(w2 * u * u)), float(np.sum(w2 * u)), float(np.sum(w2))
    suy, sy = float(np.sum(w2 * u * y)), float(np.sum(w2 * y))
    options = [(0.0, sy / s1), (suy / suu if suu > 0 else 0.0, 0.0)]
    det = suu * s1 - su * su
    if det > 1e-12 * suu * s1:
        a, b = (suy * s1 - su * sy) / det, (suu * sy - su * suy) / det
        if a >= 0 and b >= 0:
            options.append((a, b))

    def error(ab: tuple[float, float]) -> float:
        return float(np.sqrt(np.mean(((ab[0] * u + ab[1] - y) / y) ** 2)))

    best = min(options, key=error)
    return best[0], best[1], error(best)


def fit_ttft(shares: np.ndarray, rates: np.ndarray, ttft: np.ndarray) -> HyperbolaFit:
    """TTFT = a1 / (x - c * rate) + b1: c on a grid below min(x / rate), then refined around the best."""
    c_max = float(np.min(shares / rates))

    def fit_at(fraction: float) -> HyperbolaFit:
        c = c_max * fraction
        a, b, err = fit_nonnegative(1.0 / (shares - c * rates), ttft)
        return HyperbolaFit(a, b, c, err)

    coarse = [fit_at(float(f)) for f in _GRID]
    k = min(range(len(coarse)), key=lambda i: coarse[i].error)
    lo, hi = _GRID[max(k - 1, 0)], _GRID[min(k + 1, len(_GRID) - 1)]
    return min([coarse[k]] + [fit_at(float(f)) for f in np.linspace(lo, hi, 33)], key=lambda fit: fit.error)


def fit_tpot(shares: np.ndarray, tpot: np.ndarray) -> HyperbolaFit:
    """TPOT = a2 / y + b2."""
    a, b, err = fit_nonnegative(1.0 / shares, tpot)
    return HyperbolaFit(a, b, 0.0, err)


@register_predictor("paper")
class PaperPredictor(Predictor):
    """Eq. 1-4 of the paper with a1, b1, lambda, a2, b2 fitted online (see the module docstring)."""

    name = "paper"

    def __init__(self, history_size: int = 8, min_distinct: int = 3, max_fit_error: float = 0.25) -> None:
        if isinstance(history_size, bool) or not isinstance(history_size, int) or history_size < 3:
            raise ValueError(f"history_size must be an integer >= 3, got {history_size!r}")
        if isinstance(min_distinct, bool) or not isinstance(min_distinct, int) or not 2 <= min_distinct <= history_size:
            raise ValueError(f"min_distinct must be an integer in [2, history_size], got {min_distinct!r}")
        if not (isinstance(max_fit_error, (int, float)) and max_fit_error > 0):
            raise ValueError(f"max_fit_error must be > 0, got {max_fit_error!r}")
        self.history_size = history_size
        self.min_distinct = min_distinct
        self.max_fit_error = float(max_fit_error)
        # split -> (share, rate, latency ms); insertion order is recency.
        self._ttft_points: dict[tuple[float, float], tuple[float, float, float]] = {}
        self._tpot_points: dict[tuple[float, float], tuple[float, float, float]] = {}
        self._ttft_fit: HyperbolaFit | None = None
        self._tpot_fit: HyperbolaFit | None = None
        self._rate_known = False

    def observe(self, observation: Observation) -> None:
        alloc = observation.allocation
        key = (round(alloc.prefill_percentage, 6), round(alloc.decode_percentage, 6))
        if observation.ttft_ms > 0:
            self._remember(self._ttft_points, key,
                           (alloc.prefill_percentage, observation.arrival_rate, observation.ttft_ms))
            self._ttft_fit = self._fit(self._ttft_points, ttft=True)
        if observation.tpot_ms > 0:
            self._remember(self._tpot_points, key, (alloc.decode_percentage, 0.0, observation.tpot_ms))
            self._tpot_fit = self._fit(self._tpot_points, ttft=False)

    def _remember(self, points: dict[tuple[float, float], tuple[float, float, float]],
                  key: tuple[float, float], point: tuple[float, float, float]) -> None:
        points.pop(key, None)
        points[key] = point
        while len(points) > self.history_size:
            del points[next(iter(points))]

    def _fit(self, points: dict[tuple[float, float], tuple[float, float, float]], ttft: bool) -> HyperbolaFit | None:
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

    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        x, x0 = allocation.prefill_percentage, observation.allocation.prefill_percentage
        y, y0 = allocation.decode_percentage, observation.allocation.decode_percentage
        rate = observation.arrival_rate if self._rate_known else 1.0
        demand = observation.arrival_rate if observation.arrival_rate > 0 else observation.request_throughput
        ttft_fit, tpot_fit = self._ttft_fit, self._tpot_fit
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
