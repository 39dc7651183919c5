"""`InProcessClient`: an `EngineClient` over an `AsyncEngine` (or any object with its attributes,
such as the tests' fake engines) running in this process."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from semipd.allocation import SMAllocation
from semipd.engine.core.interface import EngineClient, EngineUnavailableError, NoPartitionsError
from semipd.engine.sampling_params import RequestOutput, SamplingParams


class InProcessClient(EngineClient):
    """Adapts `async_engine` (``semipd.engine.AsyncEngine``); its ``engine`` gives the tokenizer,
    limits and metrics; its ``mode`` "semi-pd" means the engine has ``set_allocation``."""

    def __init__(self, async_engine: Any) -> None:
        self.async_engine = async_engine
        engine = async_engine.engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = int(engine.max_model_len)
        self.vocab_size = int(engine.model_config.vocab_size)
        self.metrics_collector = engine.metrics_collector
        self.mode = str(async_engine.mode)
        self.has_partitions = self.mode == "semi-pd"
        self.max_waiting = int(async_engine.max_waiting)

    async def start(self) -> None:
        self.async_engine.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.async_engine.stop)

    @property
    def is_running(self) -> bool:
        return bool(self.async_engine.is_running)

    async def generate(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        if not self.is_running:
            raise EngineUnavailableError("the engine is not running")
        async for out in self.async_engine.generate(rid, prompt_token_ids, params):
            yield out

    def abort(self, rid: str) -> None:
        self.async_engine.abort(rid)

    def get_status(self) -> dict[str, Any]:
        return self.async_engine.get_status()

    async def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        if not self.has_partitions:
            raise NoPartitionsError(f"the engine runs in mode {self.mode!r}, which has no SM partitions to allocate")
        return await asyncio.to_thread(self.async_engine.set_sm_allocation, allocation)

    @property
    def num_waiting(self) -> int:
        return int(self.async_engine.num_waiting)
