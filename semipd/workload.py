"""Workloads: request arrival times and prompt/output lengths.

A workload is a list of `WorkloadRequest`s sorted by arrival time (seconds from the start
of the workload). They come from a real trace (`load_azure_trace`), from a synthetic
arrival process (`synthetic_workload`: Poisson or gamma arrivals as `vllm bench serve`
draws them), or from a sequence of such phases (`phased_workload`). Everything is
deterministic given a seed. The simulator and the benchmark client both consume these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semipd.trace_csv import read_azure_trace_csv

_ARRIVAL_CHUNK = 4096


@dataclass(frozen=True)
class WorkloadRequest:
    """One request of a workload."""

    arrival_time: float  # seconds from the start of the workload
    input_len: int  # prompt tokens
    output_len: int  # tokens to generate

    def __post_init__(self) -> None:
        if not math.isfinite(self.arrival_time) or self.arrival_time < 0:
            raise ValueError(f"arrival_time must be finite and >= 0, got {self.arrival_time}")
        if self.input_len < 1:
            raise ValueError(f"input_len must be >= 1, got {self.input_len}")
        if self.output_len < 1:
            raise ValueError(f"output_len must be >= 1, got {self.output_len}")


# --------------------------------------------------------------------------- traces


def load_azure_trace(
    path: str | Path,
    time_scale: float = 1.0,
    max_requests: int | None = None,
    max_input_len: int | None = None,
    max_output_len: int | None = None,
    start_offset_s: float = 0.0,
) -> list[WorkloadRequest]:
    """Read an Azure LLM inference trace CSV (TIMESTAMP, ContextTokens, GeneratedTokens; see
    `semipd.trace_csv` for what it accepts and `semipd.traces` for the public traces).

    ``arrival_time = (TIMESTAMP - first TIMESTAMP - start_offset_s) * time_scale``:
    `time_scale=0.5` replays the trace twice as fast. `start_offset_s` (seconds of trace
    time) skips the requests before that point of the trace. Lengths above
    `max_input_len` / `max_output_len` are capped to them; lengths of 0 become 1. At most
    `max_requests` requests are returned (the first ones after the offset).
    """
    if not time_scale > 0 or not math.isfinite(time_scale):
        raise ValueError(f"time_scale must be a positive finite number, got {time_scale}")
    if max_requests is not None and max_requests < 1:
        raise ValueError(f"max_requests must be >= 1, got {max_requests}")
    if max_input_len is not None and max_input_len < 1:
        raise ValueError(f"max_input_len must be >= 1, got {max_input_len}")
    if max_output_len is not None and max_output_len < 1:
        raise ValueError(f"max_output_len must be >= 1, got {max_output_len}")
    if not start_offset_s >= 0 or not math.isfinite(start_offset_s):
        raise ValueError(f"start_offset_s must be finite and >= 0, got {start_offset_s}")
    rows = read_azure_trace_csv(path)
    if rows.timestamps.size == 0:
        return []
    stamps, inputs, outputs = rows.timestamps, rows.input_lens, rows.output_lens
    order = np.argsort(stamps, kind="stable")
    stamps, inputs, outputs = stamps[order], inputs[order], outputs[order]
    rel = (stamps - stamps[0]).astype(np.int64) / 1e9
    keep = rel >= start_offset_s
    rel, inputs, outputs = rel[keep], inputs[keep], outputs[keep]
    if max_requests is not None:
        rel, inputs, outputs = rel[:max_requests], inputs[:max_requests], outputs[:max_requests]
    arrivals = (rel - start_offset_s) * time_scale
    inputs = np.maximum(inputs, 1)
    outputs = np.maximum(outputs, 1)
    if max_input_len is not None:
        inputs = np.minimum(inputs, max_input_len)
    if max_output_len is not None:
        outputs = np.minimum(outputs, max_output_len)
    return [
        WorkloadRequest(float(t), int(i), int(o))
        for t, i, o in zip(arrivals.tolist(), inputs.tolist(), outputs.tolist(), strict=True)
    ]


# --------------------------------------------------------------------------- arrivals


def gamma_arrivals(
    rate: float,
    burstiness: float,
    rng: np.random.Generator,
    num_requests: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Arrival times (seconds, ascending, the first at 0) with gamma-distributed gaps.

    As in `vllm bench serve`: gaps ~ Gamma(shape=burstiness, scale=1/(rate*burstiness)),
    so the mean rate is `rate` whatever the burstiness; burstiness 1 is a Poisson
    process, below 1 is burstier, above 1 more regular. Stops after `num_requests`
    arrivals or before `duration` seconds, whichever comes first (at least one is needed).
    `rate=inf` sends all `num_requests` at time 0.
    """
    if num_requests is None and duration is None:
        raise ValueError("num_requests or duration must be given")
    if num_requests is not None and num_requests < 0:
        raise ValueError(f"num_requests must be >= 0, got {num_requests}")
    if duration is not None and (not duration > 0 or not math.isfinite(duration)):
        raise ValueError(f"duration must be a positive finite number, got {duration}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if not burstiness > 0 or not math.isfinite(burstiness):
        raise ValueError(f"burstiness must be a positive finite number, got {burstiness}")
    if math.isinf(rate):
        if num_requests is None:
            raise ValueError("rate=inf needs num_requests")
        return np.zeros(num_requests)

    scale = 1.0 / (rate * burstiness)
    if num_requests is not None:
        gaps = rng.gamma(burstiness, scale, size=max(num_requests - 1, 0))
        times = np.concatenate(([0.0], np.cumsum(gaps)))[:num_requests]
        return times if duration is None else times[times < duration]

    parts = [np.zeros(1)]
    last = 0.0
    while last < duration:
        gaps = rng.gamma(burstiness, scale, size=_ARRIVAL_CHUNK)
        chunk = last + np.cumsum(gaps)
        parts.append(chunk)
        last = float(chunk[-1])
    times = np.concatenate(parts)
    return times[times < duration]


def poisson_arrivals(
    rate: float,
    rng: np.random.Generator,
    num_requests: int | None = None,
    duration: float | None = None,
) -> np.ndarray:
    """Poisson arrivals: `gamma_arrivals` with burstiness 1 (same draws for the same rng)."""
    return gamma_arrivals(rate, 1.0, rng, num_requests=num_requests, duration=duration)


# --------------------------------------------------------------------------- lengths


class LengthDist:
    """A distribution of token counts; `sample(rng, n)` returns `n` ints >= 1.

    Build one with `LengthDist.fixed(n)`, `LengthDist.uniform(lo, hi)` (inclusive),
    `LengthDist.lognormal(mean, median, lo=1, hi=None)` (a log-normal with that mean and
    median, clipped to [lo, hi]) or `LengthDist.empirical(samples)` (resampled).
    """

    def __init__(self, kind: str, params: tuple[Any, ...], description: str) -> None:
        self.kind = kind
        self._params = params
        self.description = description

    def __repr__(self) -> str:
        return f"LengthDist.{self.description}"

    @classmethod
    def fixed(cls, n: int) -> LengthDist:
        if int(n) != n or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n}")
        return cls("fixed", (int(n),), f"fixed({int(n)})")

    @classmethod
    def uniform(cls, lo: int, hi: int) -> LengthDist:
        if int(lo) != lo or lo < 1:
            raise ValueError(f"lo must be an integer >= 1, got {lo}")
        if int(hi) != hi or hi < lo:
            raise ValueError(f"hi must be an integer >= lo ({lo}), got {hi}")
        return cls("uniform", (int(lo), int(hi)), f"uniform({int(lo)}, {int(hi)})")

    @classmethod
    def lognormal(cls, mean: float, median: float, lo: int = 1, hi: int | None = None) -> LengthDist:
        if not median > 0:
            raise ValueError(f"median must be > 0, got {median}")
        if not mean >= median:
            raise ValueError(f"mean must be >= median ({median}) for a log-normal, got {mean}")
        if int(lo) != lo or lo < 1:
            raise ValueError(f"lo must be an integer >= 1, got {lo}")
        if hi is not None and (int(hi) != hi or hi < lo):
            raise ValueError(f"hi must be an integer >= lo ({lo}), got {hi}")
        mu = math.log(median)
        sigma = math.sqrt(2.0 * math.log(mean / median))
        return cls("lognormal", (mu, sigma, int(lo), hi), f"lognormal(mean={mean:g}, median={median:g})")

    @classmethod
    def empirical(cls, samples: Sequence[int] | np.ndarray) -> LengthDist:
        values = np.asarray(samples, dtype=np.int64)
        if values.ndim != 1 or values.size == 0:
            raise ValueError("samples must be a non-empty 1-D sequence")
        if values.min() < 1:
            raise ValueError(f"samples must all be >= 1, got a minimum of {values.min()}")
        return cls("empirical", (values,), f"empirical(n={values.size}, mean={values.mean():.1f})")

    @classmethod
    def coerce(cls, value: int | LengthDist, field: str) -> LengthDist:
        """An int means `fixed(int)`; a `LengthDist` passes through."""
        if isinstance(value, LengthDist):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{field} must be an int or a LengthDist, got {value!r}")
        if value < 1:
            raise ValueError(f"{field} must be >= 1, got {value}")
        return cls.fixed(int(value))

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` lengths as an int64 array."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if self.kind == "fixed":
            return np.full(n, self._params[0], dtype=np.int64)
        if self.kind == "uniform":
            lo, hi = self._params
            return rng.integers(lo, hi, size=n, endpoint=True, dtype=np.int64)
        if self.kind == "lognormal":
            mu, sigma, lo, hi = self._params
            values = np.rint(rng.lognormal(mu, sigma, size=n)).astype(np.int64)
            return np.clip(values, lo, hi if hi is not None else np.iinfo(np.int64).max)
        (values,) = self._params
        return rng.choice(values, size=n, replace=True)


# --------------------------------------------------------------------------- workloads


def synthetic_workload(
    rate: float,
    *,
    num_requests: int | None = None,
    duration: float | None = None,
    input_len: int | LengthDist = 1024,
    output_len: int | LengthDist = 128,
    burstiness: float = 1.0,
    seed: int = 0,
) -> list[WorkloadRequest]:
    """Requests arriving at `rate` req/s (gamma gaps of the given burstiness; 1 = Poisson)
    with lengths drawn from `input_len` / `output_len` (ints are fixed lengths)."""
    inputs = LengthDist.coerce(input_len, "input_len")
    outputs = LengthDist.coerce(output_len, "output_len")
    rng = np.random.default_rng(seed)
    times = gamma_arrivals(rate, burstiness, rng, num_requests=num_requests, duration=duration)
    return _assemble(times, inputs.sample(rng, times.size), outputs.sample(rng, times.size))


@dataclass(frozen=True)
class Phase:
    """One phase of a `phased_workload`: `duration` seconds at `rate` req/s."""

    duration: float
    rate: float
    input_len: int | LengthDist
    output_len: int | LengthDist
    burstiness: float = 1.0

    def __post_init__(self) -> None:
        if not self.duration > 0 or not math.isfinite(self.duration):
            raise ValueError(f"duration must be a positive finite number, got {self.duration}")
        if not self.rate > 0 or not math.isfinite(self.rate):
            raise ValueError(f"rate must be a positive finite number, got {self.rate}")
        if not self.burstiness > 0 or not math.isfinite(self.burstiness):
            raise ValueError(f"burstiness must be a positive finite number, got {self.burstiness}")
        LengthDist.coerce(self.input_len, "input_len")
        LengthDist.coerce(self.output_len, "output_len")


def phased_workload(phases: Sequence[Phase], seed: int = 0) -> list[WorkloadRequest]:
    """Phases one after the other; each phase's arrivals start when the previous one ends."""
    if not phases:
        raise ValueError("phases must not be empty")
    rng = np.random.default_rng(seed)
    parts: list[list[WorkloadRequest]] = []
    start = 0.0
    for phase in phases:
        times = start + gamma_arrivals(phase.rate, phase.burstiness, rng, duration=phase.duration)
        n = times.size
        inputs = LengthDist.coerce(phase.input_len, "input_len").sample(rng, n)
        outputs = LengthDist.coerce(phase.output_len, "output_len").sample(rng, n)
        parts.append(_assemble(times, inputs, outputs))
        start += phase.duration
    return [r for part in parts for r in part]


def prefill_heavy_then_decode_heavy(duration: float = 240.0, seed: int = 0) -> list[WorkloadRequest]:
    """A built-in two-phase workload: for the first half of `duration`, 5 req/s of long prompts
    (mean 2,000 tokens) with short answers (16-64 tokens); for the second half, 16 req/s of
    short prompts (64-512 tokens) with long answers (mean 650 tokens). On the simulated H100
    with Llama-3.1-8B the first half wants most SMs on prefill and the second most on decode,
    so no static split suits both."""
    if not duration > 0 or not math.isfinite(duration):
        raise ValueError(f"duration must be a positive finite number, got {duration}")
    half = duration / 2
    return phased_workload(
        [
            Phase(half, rate=5.0, input_len=LengthDist.lognormal(2000, 1700, lo=256, hi=8000),
                  output_len=LengthDist.uniform(16, 64)),
            Phase(half, rate=16.0, input_len=LengthDist.uniform(64, 512),
                  output_len=LengthDist.lognormal(650, 550, lo=64, hi=2048)),
        ],
        seed=seed,
    )


def concatenate_phases(phases: Sequence[Sequence[WorkloadRequest]], phase_seconds: float) -> list[WorkloadRequest]:
    """Phases one after the other, `phase_seconds` each: of each phase (a workload, e.g. a trace),
    the requests that arrive in its first `phase_seconds`, shifted to start where the previous phase
    ended. Phased workloads from any traces (`semipd simulate --phase-trace A --phase-trace B`)."""
    if not phases:
        raise ValueError("phases must not be empty")
    if not phase_seconds > 0 or not math.isfinite(phase_seconds):
        raise ValueError(f"phase_seconds must be a positive finite number, got {phase_seconds}")
    out: list[WorkloadRequest] = []
    for i, phase in enumerate(phases):
        start = i * phase_seconds
        out.extend(WorkloadRequest(start + r.arrival_time, r.input_len, r.output_len)
                   for r in phase if r.arrival_time < phase_seconds)
    return out


def describe_workload(workload: Sequence[WorkloadRequest]) -> dict[str, float | int]:
    """Summary numbers of a workload (for reports): count, span, rate, mean/median lengths."""
    if not workload:
        return {"num_requests": 0, "duration_s": 0.0, "request_rate": 0.0, "mean_input_len": 0.0,
                "median_input_len": 0.0, "mean_output_len": 0.0, "median_output_len": 0.0,
                "total_input_tokens": 0, "total_output_tokens": 0}
    arrivals = np.array([r.arrival_time for r in workload])
    inputs = np.array([r.input_len for r in workload])
    outputs = np.array([r.output_len for r in workload])
    span = float(arrivals.max() - arrivals.min())
    return {
        "num_requests": len(workload),
        "duration_s": span,
        "request_rate": (len(workload) - 1) / span if span > 0 else 0.0,
        "mean_input_len": float(inputs.mean()),
        "median_input_len": float(np.median(inputs)),
        "mean_output_len": float(outputs.mean()),
        "median_output_len": float(np.median(outputs)),
        "total_input_tokens": int(inputs.sum()),
        "total_output_tokens": int(outputs.sum()),
    }


def _assemble(times: np.ndarray, inputs: np.ndarray, outputs: np.ndarray) -> list[WorkloadRequest]:
    return [
        WorkloadRequest(float(t), int(i), int(o))
        for t, i, o in zip(times.tolist(), inputs.tolist(), outputs.tolist(), strict=True)
    ]
