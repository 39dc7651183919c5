"""SLO attainment: the share of requests that meet both SLOs, as observed in a window and as predicted.

Goodput is the rate of requests that meet both SLOs, so the algorithm ranks splits by the
share of requests it expects to meet both (`semipd.slo.algorithm`). A window holds TTFT
samples (requests whose first token fell in it) and TPOT samples (streaming TPOT when there
are enough, else completed requests'), not pairs, so the share meeting both is taken as the
product of the two shares: exact when a request's TTFT and TPOT are independent, an
underestimate when misses cluster in time (an overload misses both).

Predicted attainment. A predictor gives one latency per SLO, at the SLO's percentile. The
latencies of the window are taken to keep their shape and move with it: a split expected to
read E where the window's percentile reads P has samples x E / P, and the share within the
target is read off those. With fewer samples than the percentile needs, the share is 1 when E
meets the target and 0 otherwise; with no E at all (nothing read, nothing forecast), 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from semipd.slo.constraints import SLOConstraints
from semipd.slo.observation import Observation


@dataclass(frozen=True)
class Attainment:
    """Shares of requests within the TTFT target, within the TPOT target, and within both."""

    ttft: float
    tpot: float

    @property
    def both(self) -> float:
        return self.ttft * self.tpot

    def as_dict(self) -> dict[str, float]:
        return {"ttft": self.ttft, "tpot": self.tpot, "both": self.both}


def observed_attainment(observation: Observation, slo: SLOConstraints) -> Attainment:
    """The shares in the window itself (1 for an SLO without samples)."""
    ttft, tpot = _samples(observation)
    return Attainment(_share(ttft, slo.ttft_target_ms), _share(tpot, slo.tpot_target_ms))


def predicted_attainment(observation: Observation, slo: SLOConstraints, ttft_ms: float | None,
                         tpot_ms: float | None) -> Attainment:
    """The shares expected of a split whose TTFT and TPOT read `ttft_ms` and `tpot_ms` at the SLO
    percentiles, given the shape of the window's latencies (see the module docstring)."""
    ttft, tpot = _samples(observation)
    return Attainment(_scaled_share(ttft, observation.ttft_percentile_ms, ttft_ms, slo.ttft_target_ms),
                      _scaled_share(tpot, _tpot_percentile(observation), tpot_ms, slo.tpot_target_ms))


def _samples(observation: Observation) -> tuple[np.ndarray, np.ndarray]:
    metrics = observation.metrics
    streaming = observation.streaming_tpot_ms > 0
    return metrics.ttft_samples, metrics.streaming_tpot_samples if streaming else metrics.tpot_samples


def _tpot_percentile(observation: Observation) -> float:
    return observation.streaming_tpot_ms if observation.streaming_tpot_ms > 0 else observation.tpot_percentile_ms


def _share(samples: np.ndarray, target: float) -> float:
    return float(np.mean(samples <= target)) if samples.size else 1.0


def _scaled_share(samples: np.ndarray, percentile_ms: float, expected_ms: float | None, target: float) -> float:
    if expected_ms is None:
        return 1.0
    if percentile_ms <= 0 or samples.size == 0:
        return 1.0 if expected_ms <= target else 0.0
    return float(np.mean(samples * (expected_ms / percentile_ms) <= target))
