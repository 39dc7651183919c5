"""`InProcessClient`: an `EngineClient` over an `AsyncEngine` (or any object with its attributes,
such as the tests' fake engines) running in this process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from semipd.allocation import SMAllocation
from semipd.engine.core.interface import EngineClient, EngineUnavailableError, NoPartitionsError, QueueFullError
from semipd.engine.sampling_params import RequestOutput, SamplingParams

logger = logging.getLogger(__name__)

DEFAULT_STATUS_INTERVAL_S = 0.2


class InProcessClient(EngineClient):
    """Adapts `async_engine` (``semipd.engine.AsyncEngine``); its ``engine`` gives the tokenizer,
    limits and metrics; its ``mode`` "semi-pd" means the engine has ``set_allocation``.

    While started, it reads the engine's status snapshot every ``status_interval_s`` (the engine's,
    else 0.2 s) into the metrics collector, as `EngineCoreClient` does with the core's snapshots:
    an engine records its state when it steps, and an idle one (its requests aborted) no longer
    steps."""

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
        self.status_interval_s = float(getattr(async_engine, "status_interval_s", DEFAULT_STATUS_INTERVAL_S))
        self._status_task: asyncio.Task | None = None

    async def start(self) -> None:
        self.async_engine.start()
        self._status_task = asyncio.ensure_future(self._follow_status())

    async def stop(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._status_task
            self._status_task = None
        await asyncio.to_thread(self.async_engine.stop)

    async def _follow_status(self) -> None:
        while True:
            try:
                self.record_status_metrics(self.get_status())
            except Exception:  # a malformed status must not end the loop
                logger.exception("recording the engine status in the metrics failed")
            await asyncio.sleep(self.status_interval_s)

    @property
    def is_running(self) -> bool:
        return bool(self.async_engine.is_running)

    async def generate(self, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                       arrival_time: float | None = None) -> AsyncIterator[RequestOutput]:
        if not self.is_running:
            raise EngineUnavailableError("the engine is not running")
        outputs = self.async_engine.generate(rid, prompt_token_ids, params)
        try:
            try:
                first = await anext(outputs)
            except QueueFullError as exc:  # the engine does not know how long the queue takes
                raise QueueFullError(str(exc), retry_after_s=self.retry_after_s()) from None
            except StopAsyncIteration:
                return
            yield first
            async for out in outputs:
                yield out
        finally:
            await outputs.aclose()

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
