"""Request bodies bounded in size and in upload time, before anything parses them.

`BodyLimitMiddleware` is a pure ASGI middleware: a declared ``Content-Length`` over the limit is
refused at once (413) without reading the body; otherwise it counts the bytes of every
``http.request`` message as the application reads them and refuses the request (413) as soon as
the count passes the limit, so a huge body is never buffered whole. A body that has not fully
arrived within the timeout, counted from the end of the request head, is refused with 408.
Refusals carry an OpenAI error body and ``Connection: close``; the application then sees the
client as gone (``http.disconnect``) and whatever it still sends is dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from semipd.server.errors import APIError

_DISCONNECT: Message = {"type": "http.disconnect"}


def too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than the server accepts ({limit} bytes).",
                    code="request_too_large", error_type="invalid_request_error")


def too_slow(timeout_s: float) -> APIError:
    return APIError(408, f"The request body did not arrive within {timeout_s:g} s.", code="request_timeout",
                    error_type="invalid_request_error")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the HTTP server refuses a malformed length before the app sees it
    return None


class _GuardedRequest:
    """One request's body accounting; `receive` and `send` stand in for the server's."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, limit: int, timeout_s: float) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.limit = limit
        self.timeout_s = timeout_s
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._received = 0
        self._body_done = False
        self._response_started = False
        self._refused = False

    async def receive(self) -> Message:
        if self._refused:
            return _DISCONNECT
        if self._body_done:
            return await self._receive()
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            return await self.refuse(too_slow(self.timeout_s))
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self.limit:
                return await self.refuse(too_large(self.limit))
            if not message.get("more_body", False):
                self._body_done = True
        return message

    async def send(self, message: Message) -> None:
        if self._refused:
            return
        if message["type"] == "http.response.start":
            self._response_started = True
        await self._send(message)

    async def refuse(self, error: APIError) -> Message:
        """Answer `error` (unless a response already started) and end the request for the app."""
        if not self._response_started:
            error.headers["Connection"] = "close"
            await error.response()(self.scope, self._receive, self._send)
        self._refused = True
        return _DISCONNECT


class BodyLimitMiddleware:
    """Bodies over `max_body_bytes()` bytes get 413, bodies slower than `body_timeout_s` get 408.

    `max_body_bytes` is called per request (the default depends on the engine's context length,
    known once the engine has started)."""

    def __init__(self, app: ASGIApp, max_body_bytes: Callable[[], int], body_timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes()
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            error = too_large(limit)
            error.headers["Connection"] = "close"
            await error.response()(scope, receive, send)
            return
        guarded = _GuardedRequest(scope, receive, send, limit, self.body_timeout_s)
        await self.app(scope, guarded.receive, guarded.send)
