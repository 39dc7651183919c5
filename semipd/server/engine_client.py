"""What the server needs from the engine, in one place.

`EngineClient` wraps an `AsyncEngine` (``semipd.engine.async_engine``) and its `Engine`
(``async_engine.engine``): tokenizer, context length, vocabulary size, the metrics collector,
generate / abort / status, and manual SM allocation. Any object with the same attributes
works (tests use a fake engine that streams known tokens).

Manual allocation: an engine with SM partitions (mode ``semi-pd``) exposes
``set_sm_allocation(SMAllocation)`` on its AsyncEngine, which applies the split and switches
its controller to static; engines without partitions (mode ``unified``) have no such method.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from semipd.allocation import SMAllocation
from semipd.engine.async_engine import QueueFullError, RequestFailedError
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.server.errors import bad_request

__all__ = ["EngineClient", "NoPartitionsError", "QueueFullError", "RequestFailedError"]

LONG_PROMPT_CHARS = 16_384
"""Prompts longer than this are tokenized in a worker thread, not on the event loop."""


class NoPartitionsError(ValueError):
    """The engine has no SM partitions to allocate (e.g. unified mode)."""


class EngineClient:
    """The server's view of an AsyncEngine."""

    def __init__(self, async_engine: Any) -> None:
        self.async_engine = async_engine
        engine = async_engine.engine
        self.tokenizer = engine.tokenizer
        self.max_model_len: int = int(engine.max_model_len)
        self.vocab_size: int = int(engine.model_config.vocab_size)
        self.metrics_collector = engine.metrics_collector

    def start(self) -> None:
        self.async_engine.start()

    def stop(self) -> None:
        self.async_engine.stop()

    @property
    def is_running(self) -> bool:
        """Whether the engine's loop is alive (health)."""
        return bool(self.async_engine.is_running)

    def generate(self, rid: str, prompt_token_ids: list[int], params: SamplingParams) -> AsyncIterator[RequestOutput]:
        return self.async_engine.generate(rid, prompt_token_ids, params)

    def abort(self, rid: str) -> None:
        self.async_engine.abort(rid)

    def get_status(self) -> dict[str, Any]:
        return self.async_engine.get_status()

    def set_sm_allocation(self, allocation: SMAllocation) -> None:
        """Apply `allocation` by hand. Raises NoPartitionsError when the engine has no partitions and
        ValueError when the engine cannot realise the split."""
        setter = getattr(self.async_engine, "set_sm_allocation", None)
        if setter is None:
            mode = self.get_status().get("mode", "unknown")
            raise NoPartitionsError(f"the engine runs in mode {mode!r}, which has no SM partitions to allocate")
        setter(allocation)

    async def encode(self, text: str) -> list[int]:
        """Token ids of a text prompt (400 when the model has no tokenizer)."""
        tokenizer = self._require_tokenizer("text prompts need a tokenizer; send token ids instead")
        if len(text) > LONG_PROMPT_CHARS:
            return await asyncio.to_thread(tokenizer.encode, text)
        return tokenizer.encode(text)

    async def chat_prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of `messages` rendered with the model's chat template (400 when it cannot be)."""
        tokenizer = self._require_tokenizer("chat completions need a tokenizer with a chat template")

        def render() -> list[int]:
            return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))

        try:
            if sum(len(m["content"]) for m in messages) > LONG_PROMPT_CHARS:
                return await asyncio.to_thread(render)
            return render()
        except Exception as exc:  # template errors (jinja2 raise_exception, missing template) are the input's fault
            raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from None

    def _require_tokenizer(self, message: str) -> Any:
        if self.tokenizer is None:
            raise bad_request(message, code="no_tokenizer")
        return self.tokenizer
