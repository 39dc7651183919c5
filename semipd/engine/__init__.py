"""The real engine: models, weights, KV cache, sampler, CUDA graphs, `Engine`, `AsyncEngine`, `LLM`.

Names resolve lazily, so ``from semipd.engine import SamplingParams`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "SamplingParams": "semipd.engine.sampling_params",
    "RequestOutput": "semipd.engine.sampling_params",
    "CompletionOutput": "semipd.engine.sampling_params",
    "EngineConfig": "semipd.engine.engine_config",
    "MODES": "semipd.engine.engine_config",
    "Engine": "semipd.engine.engine",
    "create_engine": "semipd.engine.factory",
    "SemiPDEngine": "semipd.engine.semi_pd.engine",
    "SemiPDConfig": "semipd.engine.semi_pd.config",
    "StepError": "semipd.engine.errors",
    "AsyncEngine": "semipd.engine.async_engine",
    "QueueFullError": "semipd.engine.core.interface",
    "RequestFailedError": "semipd.engine.core.interface",
    "LLM": "semipd.engine.llm",
    "ModelConfig": "semipd.engine.models.config",
    "preset_names": "semipd.engine.models.presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'semipd.engine' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
