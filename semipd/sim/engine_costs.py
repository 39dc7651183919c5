"""What the real engine costs beyond the GPU kernels a `PerfModel` times.

The engine takes longer than its kernels: every iteration has host work that does not
overlap the GPU (building inputs, the scheduler update, handing outputs on), every token
handed on costs Python time, the prefill worker's launches wait for the GIL while those
outputs are handled, a request spends time getting into the engine and its tokens getting out,
and its runners are slower than the fitted roofline (`semipd.sim.engine_scaling`).
`EngineCosts` holds those costs; `SimConfig.costs` applies them.

Presets (`COSTS`):

- ``ideal``: the GPU alone (the simulator's default, and its behaviour before these costs existed);
- ``engine``: the engine driven in-process (``benchmarks/bench_semipd.py``'s ``mixed`` part);
- ``http``: the engine behind ``semipd serve`` as it was built before the engine-core process
  (streaming, one process for HTTP and the engine, one step at a time);
- ``core``: the engine behind today's ``semipd serve``: the engine core in its own process,
  overlapped steps, piecewise CUDA graphs. Use it with a measured profile (``--perf-model
  llama-3.1-8b-h100-measured`` on an H100): its step times carry the engine's own runner.

Where the numbers come from (H100, Llama-3.1-8B, ``benchmarks/results``):

- ``host_step_ms`` 2.0: in ``semipd_h100.json`` (``mixed``, static:88 at 12-20 req/s) the decode
  worker is busy 99.7% of the time and waits for the device 82-83% of it, at a median step of
  11-14 ms: 1.9-2.4 ms of host work per step. The unified engine's offline run
  (``engine_h100_rerun.json``) spends 0.18 ms scheduling, 0.47 ms building inputs and 1.55 ms
  in the update per step. A measured profile that carries ``host_overhead_ms`` has it in its step
  times already; the presets then add nothing.
- ``host_per_seq_ms``, ``prefill_host_per_seq_ms`` and ``frontend_ms`` were fitted by
  ``benchmarks/sim_fidelity.py`` to the committed H100 runs; docs/PERFORMANCE.md ("Simulator
  fidelity") gives the fit and how far the simulator stays from those runs.
- ``core``'s numbers come from a grid over host work per step (0, 0.25, 0.5 ms), per decoding
  sequence (0-0.04 ms), per sequence beside a prefill iteration (0-0.2 ms) and the front-end offset
  (10-25 ms), replaying ``http_h100_unified.json`` and ``http_h100_static88.json`` with the measured
  profile. The preset (no host time per step: the steps overlap it) gets unified mode to 9 of 12
  P50/P90 TTFT and TPOT cells within 10% and every attainment within 2.2 points; no point of the
  grid brings the static split's attainment at 20 req/s closer than 11 points (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from semipd.perf.model import PHASES, PerfModel
from semipd.perf.profile import ProfilePerfModel
from semipd.sim.engine_scaling import engine_scaled

DEFAULT_HOST_STEP_MS = 2.0
"""Host work per iteration when neither the costs nor the perf model give one (module docstring)."""


def _non_negative(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@dataclass(frozen=True)
class EngineCosts:
    """Costs of the engine beyond the GPU kernels. Times in milliseconds, all finite and >= 0."""

    host_step_ms: float | None = 0.0
    """Host work per iteration of any worker, serial with its GPU work. None: the perf model's
    ``host_overhead_ms`` when it has one, else `DEFAULT_HOST_STEP_MS`."""
    host_per_seq_ms: float = 0.0
    """Host work per sequence of a decode or mixed step (its token handed on: outputs, detokenizing, streaming)."""
    prefill_host_per_seq_ms: float = 0.0
    """Host time a Semi-PD prefill iteration loses per sequence decoding beside it: handing their tokens
    on holds the GIL that the prefill worker's kernel launches wait for."""
    frontend_ms: float = 0.0
    """Added to TTFT and end-to-end latency (not TPOT or ITL): the request's way into the engine and
    its first token's way out."""
    scale_to_engine: bool = False
    """Rescale iteration times to the engine's measured figures (`semipd.sim.engine_scaling`), when the
    perf model has them."""

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "scale_to_engine":
                if not isinstance(value, bool):
                    raise ValueError(f"scale_to_engine must be a bool, got {value!r}")
            elif not (value is None and f.name == "host_step_ms") and not _non_negative(value):
                raise ValueError(f"{f.name} must be a finite number >= 0, got {value!r}")

    def host_step_s(self, perf: PerfModel) -> float:
        """Host seconds per iteration with `perf` (None resolved as ``host_step_ms`` says)."""
        return (self.host_step_ms if self.host_step_ms is not None else perf_host_overhead_ms(perf)) / 1e3

    def perf_model(self, perf: PerfModel) -> PerfModel:
        """`perf`, rescaled to the engine's figures when ``scale_to_engine`` asks for it."""
        return engine_scaled(perf) if self.scale_to_engine else perf

    def with_overrides(self, **changes: Any) -> EngineCosts:
        """A copy with the given fields replaced; None values leave a field as it is."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def perf_host_overhead_ms(perf: PerfModel) -> float:
    """Host time per step to add to `perf`'s step times: none for a measured profile that carries its
    own ``host_overhead_ms`` (its step times include it: `semipd.perf.profile`), else
    `DEFAULT_HOST_STEP_MS` (the analytical models hold only kernel-launch overheads)."""
    if isinstance(perf, ProfilePerfModel) and any(perf.host_overhead_s(phase) > 0 for phase in PHASES):
        return 0.0
    return DEFAULT_HOST_STEP_MS


COSTS: dict[str, EngineCosts] = {
    "ideal": EngineCosts(),
    "engine": EngineCosts(host_step_ms=None, host_per_seq_ms=0.055, frontend_ms=8.0, scale_to_engine=True),
    "http": EngineCosts(host_step_ms=None, host_per_seq_ms=0.08, prefill_host_per_seq_ms=0.2, frontend_ms=20.0,
                        scale_to_engine=True),
    "core": EngineCosts(host_step_ms=0.0, host_per_seq_ms=0.01, frontend_ms=15.0),
}
"""The presets of the module docstring."""


def get_costs(name: str) -> EngineCosts:
    """A preset of `COSTS` by name (ValueError naming the known ones)."""
    try:
        return COSTS[name]
    except KeyError:
        raise ValueError(f"unknown engine costs {name!r}; known: {', '.join(COSTS)}") from None
