"""`create_engine`: the engine for a configuration's mode."""

from __future__ import annotations

from typing import Any

from semipd.clock import Clock
from semipd.engine.engine_config import EngineConfig


def create_engine(config: EngineConfig, clock: Clock | None = None, delivery: bool = True) -> Any:
    """The engine for ``config.mode``: an `Engine` (unified) or a `SemiPDEngine` (semi-pd), which
    share the public surface `AsyncEngine`, `LLM` and the engine core use. `delivery`: whether
    the engine's outputs are what clients see (False behind an API process: `LifecycleRecorder`)."""
    if config.mode == "semi-pd":
        from semipd.engine.semi_pd.engine import SemiPDEngine

        return SemiPDEngine(config, clock, delivery)
    from semipd.engine.engine import Engine

    return Engine(config, clock, delivery)
