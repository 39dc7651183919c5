"""Performance predictors: what TTFT, TPOT and throughput a split is expected to give.

All predictors share one interface, `Predictor`, and are chosen by name through a
registry (`create_predictor("heuristic")`, `register_predictor`):

- ``heuristic`` (`HeuristicPredictor`): exactly the seed's section 2.4. Note that its
  factors are relative to a 50% share, not to the current share, so it predicts a change
  even for the current split (e.g. at 70/30 it expects TPOT x 1/0.6 of what it observes).
  The algorithm therefore compares candidates with the predictor's own prediction for the
  current split, never with the raw observation.
- ``paper`` (`semipd.slo.paper.PaperPredictor`): the paper's latency model fitted online.
- ``profile`` (`ProfilePredictor`): a performance model of the GPU + model (a `PerfModel`:
  a profile measured by ``semipd profile``, or a built-in model; see `semipd.perf`) under a
  steady-state queueing model of the window's load, or any callable
  ``(allocation, metrics) -> (ttft_ms, tpot_ms, throughput)``. Its predictions are
  absolute, so it `forecasts`: a miss it predicts for the current split counts as a
  violation before the window shows it.

A predictor is named by a spec: its registered name, or for one registered with an
argument, ``name:argument`` (``profile:/path/profile.json``, ``profile:llama-3.1-8b-h100``),
so that a plain string (a config field, a command-line flag) can carry it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

from semipd.allocation import SMAllocation
from semipd.metrics.aggregated import AggregatedMetrics
from semipd.perf.forecast import SteadyStateModel
from semipd.perf.model import PerfModel
from semipd.perf.registry import get_perf_model
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


_REGISTRY: dict[str, tuple[Callable[..., Predictor], str | None]] = {}


def register_predictor(name: str, argument: str | None = None
                       ) -> Callable[[Callable[..., Predictor]], Callable[..., Predictor]]:
    """Class decorator: make a predictor constructible by `name` through `create_predictor`.
    With `argument`, the spec ``name:value`` passes ``value`` as that keyword argument."""

    def deco(factory: Callable[..., Predictor]) -> Callable[..., Predictor]:
        if name in _REGISTRY:
            raise ValueError(f"predictor {name!r} is already registered")
        if ":" in name:
            raise ValueError(f"predictor names must not contain ':', got {name!r}")
        _REGISTRY[name] = (factory, argument)
        return factory

    return deco


def available_predictors() -> list[str]:
    """Names `create_predictor` accepts (``name`` or, where it takes an argument, ``name:argument``)."""
    return sorted(_REGISTRY)


def parse_predictor_spec(spec: str) -> tuple[str, str | None]:
    """``"paper"`` -> ("paper", None); ``"profile:FILE"`` -> ("profile", "FILE"). ValueError for an
    unknown name or an argument given to a predictor that takes none."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"predictor must be a non-empty string, got {spec!r}")
    name, sep, argument = spec.partition(":")
    if name not in _REGISTRY:
        raise ValueError(f"predictor {name!r} is unknown; known: {available_predictors()}")
    if sep and (_REGISTRY[name][1] is None or not argument):
        raise ValueError(f"predictor {spec!r}: {name!r} takes no argument" if _REGISTRY[name][1] is None
                         else f"predictor {spec!r}: the argument after ':' is empty")
    return name, argument if sep else None


def create_predictor(spec: str, **kwargs: Any) -> Predictor:
    """Construct the predictor `spec` names (``name`` or ``name:argument``) with `kwargs`."""
    name, argument = parse_predictor_spec(spec)
    factory, keyword = _REGISTRY[name]
    if argument is not None:
        assert keyword is not None
        if keyword in kwargs:
            raise ValueError(f"predictor {spec!r}: {keyword} is given twice (in the spec and as an option)")
        kwargs[keyword] = argument
    return factory(**kwargs)


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


@register_predictor("profile", argument="profile")
class ProfilePredictor(Predictor):
    """Predictions from a performance model of the GPU + model, or from any profile.

    `profile` is a `PerfModel`, the name or path `semipd.perf.get_perf_model` resolves (a
    profile ``.json`` written by ``semipd profile``, or a built-in model such as
    ``llama-3.1-8b-h100``), a `PerformanceProfile` (an object with ``predict(allocation,
    metrics)``) or any callable ``(allocation, metrics) -> (ttft_ms, tpot_ms, throughput)``.
    A `PerfModel` is asked through a `SteadyStateModel` of the window's load, built with
    `max_prefill_tokens`, `max_decode_batch` and `decode_borrows_idle_prefill` (the
    schedulers' limits and the engine's borrowing; the engine's defaults) and the SLO's TTFT
    percentile. The answer is validated: latencies finite and > 0, throughput finite and >= 0.
    """

    name = "profile"
    forecasts = True

    def __init__(self, profile: PerfModel | str | Path | PerformanceProfile | ProfileFunction | None = None,
                 max_prefill_tokens: int = 8192, max_decode_batch: int = 256,
                 decode_borrows_idle_prefill: bool = True) -> None:
        if profile is None:
            raise ValueError("profile: the 'profile' predictor needs a profile: a profile .json (semipd profile), "
                             "a built-in perf model name, a PerfModel, a callable (allocation, metrics) -> "
                             "(ttft_ms, tpot_ms, throughput) or an object with such a predict method; pass it as "
                             "profile=... (or name it in the spec: 'profile:FILE')")
        if isinstance(profile, (str, Path)):
            profile = get_perf_model(str(profile))
        self._model: SteadyStateModel | None = None
        if isinstance(profile, PerfModel):
            self._model = SteadyStateModel(profile, max_prefill_tokens, max_decode_batch,
                                           decode_borrows_idle_prefill)
            self._fn: ProfileFunction = self._model.predict
        elif isinstance(profile, PerformanceProfile):
            self._fn = profile.predict
        elif callable(profile):
            self._fn = profile
        else:
            raise ValueError(f"profile must be callable or have a predict method, got {type(profile).__name__}")
        self._profile = profile

    def predict(self, allocation: SMAllocation, observation: Observation) -> Prediction:
        if self._model is not None:
            result = self._model.predict(allocation, observation.metrics, observation.ttft_percentile)
        else:
            result = self._fn(allocation, observation.metrics)
        try:
            ttft, tpot, throughput = result
            return Prediction(float(ttft), float(tpot), float(throughput))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"profile returned {result!r} for {allocation}; expected "
                             f"(ttft_ms > 0, tpot_ms > 0, throughput >= 0): {exc}") from exc

    def describe(self) -> dict[str, Any]:
        if isinstance(self._profile, PerfModel):
            return {"name": self.name, "profile": self._profile.name, "perf_model": type(self._profile).__name__}
        return {"name": self.name, "profile": getattr(self._profile, "__name__", type(self._profile).__name__)}
