"""Prompts to token ids in the API process: text through the engine client's tokenizer, chat
messages through its chat template. Long texts are tokenized, and chat templates (whose cost
grows with the number of messages as well as their text) always rendered, in a worker thread,
never on the event loop. Callers refuse texts too long for the context before calling these
(`semipd.server.sampling.check_text_length`)."""

from __future__ import annotations

import asyncio
from typing import Any

from semipd.engine.core.interface import EngineClient
from semipd.server.errors import bad_request

LONG_PROMPT_CHARS = 16_384
"""Prompts longer than this are tokenized in a worker thread, not on the event loop."""


def _require_tokenizer(client: EngineClient, message: str) -> Any:
    if client.tokenizer is None:
        raise bad_request(message, code="no_tokenizer")
    return client.tokenizer


async def encode(client: EngineClient, text: str) -> list[int]:
    """Token ids of a text prompt (400 when the model has no tokenizer)."""
    tokenizer = _require_tokenizer(client, "text prompts need a tokenizer; send token ids instead")
    if len(text) > LONG_PROMPT_CHARS:
        return await asyncio.to_thread(tokenizer.encode, text)
    return tokenizer.encode(text)


async def chat_prompt_ids(client: EngineClient, messages: list[dict[str, str]]) -> list[int]:
    """Token ids of `messages` rendered with the model's chat template (400 when it cannot be)."""
    tokenizer = _require_tokenizer(client, "chat completions need a tokenizer with a chat template")

    def render() -> list[int]:
        return list(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True))

    try:
        return await asyncio.to_thread(render)
    except Exception as exc:  # template errors (jinja2 raise_exception, missing template) are the input's fault
        raise bad_request(f"cannot apply the chat template: {exc}", param="messages") from None
