"""Performance predictors: what TTFT, TPOT and throughput a split is expected to give.

All predictors share one interface, `Predictor`, and are chosen by name through a
registry (`create_predictor("heuristic")`, `register_predictor`):

- ``heuristic`` (`HeuristicPredictor`): exactly the seed's section 2.4. Note that its
  factors are relative to a 50% share, not to the current share, so it predicts a change
  even for the current split (e.g. at 70/30 it expects TPOT x 1/0.6 of what it observes).
  The algorithm therefore compares candidates with the predictor's own prediction for the
  current split, never with the raw observation.
- ``paper`` (`semipd.slo.paper.PaperPredictor`): the paper's latency model fitted online.
- ``profile`` (`ProfilePredictor`): defers to a measured profile, any callable
  ``(allocation, metrics) -> (ttft_ms, tpot_ms, throughput)``. Its predictions are
  absolute, so it `forecasts`: a miss it predicts for the current split counts as a
  violation before the window shows it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.slo.observation import Observation


@dataclass(frozen=True)
class Prediction:
    """Expected P-th percentile latencies (ms) and request throughput (req/s) of a split."""

    ttft_ms: float
    tpot_ms: float
    throughput: float

    def __post_init__(self) -> None:
        for name in ("ttft_ms", "tpot_ms"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        if not (isinstance(self.throughput, (int, float)) and math.isfinite(self.throughput)
                and self.throughput >= 0):
            raise ValueError(f"throughput must be a finite number >= 0, got {self.throughput!r}")


class Predictor(ABC):
    """Predicts the performance of a split from the current observation."""

    name: ClassVar[str]
    forecasts: ClassVar[bool] = False
    """True when predictions are absolute (not scaled from the current window), so that a
    prediction for the current split is a forecast the algorithm may act on before the
    window shows a miss."""

    def observe(self, observation: Observation) -> None:
        """Learn from a window measured entirely under ``observation.allocation`` (default: nothing)."""
        return None

    @abstractmethod
    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        """Expected performance of `allocation` under the load seen in `observation`."""

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for status pages."""
        return {"name": self.name}


_REGISTRY: dict[str, Callable[..., Predictor]] = {}


def register_predictor(name: str) -> Callable[[Callable[..., Predictor]], Callable[..., Predictor]]:
    """Class decorator: make a predictor constructible by `name` through `create_predictor`."""

    def deco(factory: Callable[..., Predictor]) -> Callable[..., Predictor]:
        if name in _REGISTRY:
            raise ValueError(f"predictor {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_predictors() -> list[str]:
    """Names `create_predictor` accepts."""
    return sorted(_REGISTRY)


def create_predictor(name: str, **kwargs: Any) -> Predictor:
    """Construct the predictor registered as `name` with `kwargs`."""
    if name not in _REGISTRY:
        raise ValueError(f"predictor {name!r} is unknown; known: {available_predictors()}")
    return _REGISTRY[name](**kwargs)


@register_predictor("heuristic")
class HeuristicPredictor(Predictor):
    """The seed's predictor (section 2.4), unchanged.

    TTFT = base / clamp(prefill% / 50, 0.5, 2); TPOT = base / clamp(decode% / 50, 0.5, 2);
    throughput = observed request throughput x (0.8 + 0.4 x balance), balance =
    1 - |prefill% - decode%| / 100. The bases are the observed percentiles, or the targets
    when there are no samples.
    """

    name = "heuristic"

    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        prefill_factor = allocation.prefill_percentage / 50.0
        decode_factor = allocation.decode_percentage / 50.0
        ttft = observation.base_ttft_ms / min(2.0, max(0.5, prefill_factor))
        tpot = observation.base_tpot_ms / min(2.0, max(0.5, decode_factor))
        balance = 1.0 - abs(allocation.prefill_percentage - allocation.decode_percentage) / 100.0
        throughput = observation.request_throughput * (0.8 + 0.4 * balance)
        return Prediction(ttft, tpot, throughput)


@runtime_checkable
class PerformanceProfile(Protocol):
    """A measured profile: expected (ttft_ms, tpot_ms, throughput) of a split under a window's load."""

    def predict(self, allocation: SMAllocation, metrics: AggregatedMetrics) -> tuple[float, float, float]: ...


ProfileFunction = Callable[[SMAllocation, AggregatedMetrics], tuple[float, float, float]]


@register_predictor("profile")
class ProfilePredictor(Predictor):
    """Predictions from a measured profile (filled by ``semipd profile`` on a GPU).

    `profile` is a `PerformanceProfile` (an object with ``predict(allocation, metrics)``)
    or any callable ``(allocation, metrics) -> (ttft_ms, tpot_ms, throughput)``.
    The profile's answer is validated: latencies finite and > 0, throughput finite and >= 0.
    """

    name = "profile"
    forecasts = True

    def __init__(self, profile: PerformanceProfile | ProfileFunction | None = None) -> None:
        if profile is None:
            raise ValueError("profile: the 'profile' predictor needs a profile, a callable "
                             "(allocation, metrics) -> (ttft_ms, tpot_ms, throughput) or an object with "
                             "such a predict method; pass it as profile=...")
        if isinstance(profile, PerformanceProfile):
            self._fn: ProfileFunction = profile.predict
        elif callable(profile):
            self._fn = profile
        else:
            raise ValueError(f"profile must be callable or have a predict method, got {type(profile).__name__}")
        self._profile = profile

    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        result = self._fn(allocation, observation.metrics)
        try:
            ttft, tpot, throughput = result
            return Prediction(float(ttft), float(tpot), float(throughput))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"profile returned {result!r} for {allocation}; expected "
                             f"(ttft_ms > 0, tpot_ms > 0, throughput >= 0): {exc}") from exc

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "profile": getattr(self._profile, "__name__", type(self._profile).__name__)}
