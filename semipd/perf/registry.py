"""Performance models by name: the built-in ones, model names that map to them, and profile files.

``get_perf_model("llama-3.1-8b-h100")`` is the built-in analytical model of Llama-3.1-8B on an
H100 SXM (the simulator's default); ``"llama-3.1-8b-h100-measured"`` is the profile `semipd profile`
measured with the real engine on an H100 80GB HBM3 (shipped in ``semipd/perf/profiles/``); a model
name or path (``meta-llama/Llama-3.1-8B-Instruct``, ``/models/Llama-3.1-8B/``) maps to the
analytical model of that model; a path ending in ``.json`` is a measured profile
(`semipd.perf.profile`). `builtin_for` picks the built-in model matching a GPU and a model, a
measured one first, for an engine that was given no profile.
"""

from __future__ import annotations

from pathlib import Path

from semipd.perf.analytical import H100_SXM, LLAMA_3_1_8B, AnalyticalPerfModel, GPUSpec, ModelSpec
from semipd.perf.model import PerfModel
from semipd.perf.profile import ProfilePerfModel

DEFAULT_PERF_MODEL = "llama-3.1-8b-h100"

_BUILTIN: dict[str, tuple[ModelSpec, GPUSpec]] = {DEFAULT_PERF_MODEL: (LLAMA_3_1_8B, H100_SXM)}
_PROFILES = Path(__file__).resolve().parent / "profiles"
_MEASURED: dict[str, str] = {DEFAULT_PERF_MODEL: f"{DEFAULT_PERF_MODEL}-measured"}
"""Analytical model -> the measured profile of the same model and GPU (``profiles/<name>.json``)."""
# Model names (as a model path or preset would spell them, normalised) -> built-in perf model.
_ALIASES = {
    "llama-3.1-8b": DEFAULT_PERF_MODEL,
    "llama-3.1-8b-instruct": DEFAULT_PERF_MODEL,
    "meta-llama-3.1-8b": DEFAULT_PERF_MODEL,
    "meta-llama-3.1-8b-instruct": DEFAULT_PERF_MODEL,
}


def known_perf_models() -> list[str]:
    """Names `get_perf_model` accepts (besides model paths of these models and profile files)."""
    return sorted([*_BUILTIN, *_MEASURED.values()])


def get_perf_model(name: str) -> PerfModel:
    """A built-in model by name (`llama-3.1-8b-h100`), by model name or path
    (`meta-llama/Llama-3.1-8B-Instruct`, `llama-3.1-8b`), or a measured profile (`*.json`)."""
    if name.endswith(".json"):
        return load_profile(name)
    if name in _MEASURED.values():
        return load_profile(_PROFILES / f"{name}.json")
    key = normalise_model_name(name)
    key = _ALIASES.get(key, key)
    if key not in _BUILTIN:
        raise ValueError(
            f"unknown perf model {name!r}; known: {', '.join(known_perf_models())} "
            f"(also model names {', '.join(sorted(_ALIASES))}, or a profile .json from `semipd profile`)"
        )
    model, gpu = _BUILTIN[key]
    return AnalyticalPerfModel(key, model, gpu)


def load_profile(path: str | Path) -> ProfilePerfModel:
    """A measured profile (JSON, format in `semipd.perf.profile`) as a `PerfModel`."""
    return ProfilePerfModel.from_file(path)


def builtin_for(device_name: str, total_sms: int, model: str) -> str | None:
    """The built-in perf model of `model` (a name or path) on the GPU called `device_name` with
    `total_sms` SMs (e.g. ``"NVIDIA H100 80GB HBM3"``, 132): its measured profile when one is
    shipped, else the analytical model; None when there is none."""
    key = _ALIASES.get(normalise_model_name(model))
    if key is None:
        return None
    _, gpu = _BUILTIN[key]
    if gpu.name not in device_name.lower() or total_sms != gpu.total_sms:
        return None
    return _MEASURED.get(key, key)


def normalise_model_name(name: str) -> str:
    """`meta-llama/Llama-3.1-8B-Instruct`, `/models/Llama-3.1-8B/` -> `llama-3.1-8b-instruct`, `llama-3.1-8b`."""
    return name.strip().rstrip("/").rsplit("/", 1)[-1].lower().replace("_", "-")
