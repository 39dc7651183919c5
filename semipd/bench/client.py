"""Async streaming requests to an OpenAI-compatible server (ours, vLLM, SGLang).

One request is one POST to ``/v1/completions`` or ``/v1/chat/completions`` with
``stream: true`` and ``stream_options.include_usage``; the response is read as server-sent
events and timed on arrival. TTFT is the first non-empty content chunk minus the send time,
ITLs are the gaps between later non-empty chunks, the latency ends when ``[DONE]`` arrives.
Output tokens are the server's ``usage.completion_tokens`` when given, else the chunk count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from semipd.bench.datasets import BenchRequest
from semipd.bench.records import RequestRecord
from semipd.bench.sse import SSEDecoder, parse_chunk
from semipd.clock import Clock

BACKENDS: dict[str, str] = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
_ERROR_BODY_CHARS = 500


@dataclass(frozen=True)
class Endpoint:
    """Where and how to send: the full URL, the model name and the sampling settings."""

    url: str
    model: str
    chat: bool = False
    api_key: str | None = None
    ignore_eos: bool = True
    temperature: float = 0.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if not self.model:
            raise ValueError("model must not be empty")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")

    def headers(self) -> dict[str, str]:
        return auth_headers(self.api_key)

    def payload(self, request: BenchRequest) -> dict[str, Any]:
        """The JSON body for `request` (token-id prompts only on the completions endpoint)."""
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.output_len,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.ignore_eos:
            body["ignore_eos"] = True
        if self.chat:
            if not isinstance(request.prompt, str):
                raise ValueError("the chat endpoint takes text prompts, not token ids")
            body["messages"] = [{"role": "user", "content": request.prompt}]
        else:
            body["prompt"] = request.prompt if isinstance(request.prompt, str) else list(request.prompt)
        return body


def error_message(body: str) -> str:
    """The message of an OpenAI-style error body (``{"error": {"message": ...}}``), else the body, cut short."""
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        doc = None
    error = doc.get("error") if isinstance(doc, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return (message if isinstance(message, str) and message else body)[:_ERROR_BODY_CHARS]


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def api_url(base_url: str, path: str) -> str:
    """Join a server's base URL and an API path; a base ending in ``/v1`` is not doubled."""
    base = base_url.rstrip("/")
    if base.endswith("/v1") and path.startswith("/v1/"):
        base = base[:-3]
    return base + (path if path.startswith("/") else "/" + path)


@dataclass
class StreamTimings:
    """Timings and counts gathered while one response streams in (times from the send).

    Only chunks that carry a token count (`StreamChunk.is_token`: text, or an empty text field
    for a token that decodes to no text yet, as vLLM's client counts them); a chat stream's
    opening role chunk, a closing ``finish_reason`` chunk and the usage chunk are not timed.
    """

    ttft: float | None = None
    itls: list[float] = field(default_factory=list)
    last: float = 0.0
    chunks: int = 0
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    end: float | None = None
    """When ``[DONE]`` arrived; anything after it is ignored."""
    error: str = ""

    @property
    def done(self) -> bool:
        return self.end is not None

    def on_data(self, data: str, elapsed: float) -> None:
        """One SSE payload that arrived `elapsed` seconds after the send."""
        if self.done:
            return
        if data.strip() == "[DONE]":
            self.end = elapsed
            return
        chunk = parse_chunk(json.loads(data))
        if chunk.error:
            self.error = chunk.error
            return
        if chunk.completion_tokens is not None:
            self.completion_tokens = chunk.completion_tokens
        if chunk.prompt_tokens is not None:
            self.prompt_tokens = chunk.prompt_tokens
        if chunk.is_token:
            if self.ttft is None:
                self.ttft = elapsed
            else:
                self.itls.append(elapsed - self.last)
            self.last = elapsed
            self.chunks += 1


async def send_request(
    session: aiohttp.ClientSession,
    endpoint: Endpoint,
    request: BenchRequest,
    index: int,
    scheduled_time: float,
    clock: Clock,
    run_start: float,
) -> RequestRecord:
    """Send `request`, stream the reply and return its record; never raises for a failed request."""
    payload = endpoint.payload(request)
    stream = StreamTimings()
    sent = clock.now()
    try:
        async with session.post(endpoint.url, json=payload, headers=endpoint.headers()) as resp:
            if resp.status != 200:
                stream.error = f"HTTP {resp.status}: {error_message(await resp.text())}"
            else:
                # Read to the end of the body even after [DONE] so the connection can be reused.
                decoder = SSEDecoder()
                async for raw in resp.content.iter_any():
                    elapsed = clock.now() - sent
                    for data in decoder.feed(raw):
                        stream.on_data(data, elapsed)
                    if stream.error:
                        break
                else:
                    for data in decoder.flush():
                        stream.on_data(data, clock.now() - sent)
                if not (stream.done or stream.error):
                    stream.error = "stream ended before [DONE]"
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        stream.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    latency = stream.end if stream.end is not None else clock.now() - sent
    if not stream.error and stream.ttft is None:
        stream.error = "stream carried no content"
    return RequestRecord(
        index=index,
        scheduled_time=scheduled_time,
        send_time=sent - run_start,
        input_tokens=stream.prompt_tokens if stream.prompt_tokens is not None else request.input_len,
        requested_output_tokens=request.output_len,
        output_tokens=stream.completion_tokens if stream.completion_tokens is not None else stream.chunks,
        ttft=stream.ttft,
        itls=tuple(stream.itls),
        latency=latency,
        usage_reported=stream.completion_tokens is not None,
        error=stream.error,
    )
