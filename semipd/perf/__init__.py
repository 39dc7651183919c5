"""The performance model, torch-free: how long prefill and decode take on a number of SMs.

- `semipd.perf.model`: the `PerfModel` interface (step times, interference, KV capacity, host overhead);
- `semipd.perf.analytical`: a roofline model and the built-in H100 + Llama-3.1-8B (the default profile);
- `semipd.perf.profile`: measured profiles (the JSON `semipd profile` writes), interpolated;
- `semipd.perf.registry`: models by name, model name or profile path, and the built-in for a GPU + model;
- `semipd.perf.forecast`: a steady-state queueing model of a window's load over a `PerfModel`, which the
  ``profile`` predictor asks about each candidate split.

The simulator (`semipd.sim`) times its iterations with a `PerfModel`; the SLO controller's
``profile`` predictor (`semipd.slo`) forecasts with one, in the simulator and in the engine alike.
"""

from semipd.perf.analytical import AnalyticalPerfModel, GPUSpec, ModelSpec
from semipd.perf.forecast import SteadyStateModel
from semipd.perf.model import PerfModel
from semipd.perf.profile import FORMAT, ProfilePerfModel, profile_from_model, save_profile
from semipd.perf.registry import (
    DEFAULT_PERF_MODEL,
    builtin_for,
    get_perf_model,
    known_perf_models,
    load_profile,
)

__all__ = [
    "DEFAULT_PERF_MODEL",
    "FORMAT",
    "AnalyticalPerfModel",
    "GPUSpec",
    "ModelSpec",
    "PerfModel",
    "ProfilePerfModel",
    "SteadyStateModel",
    "builtin_for",
    "get_perf_model",
    "known_perf_models",
    "load_profile",
    "profile_from_model",
    "save_profile",
]
