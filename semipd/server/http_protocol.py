"""uvicorn's connection handling, bounded: `uvicorn_options` for `semipd serve`.

uvicorn (0.27+) with httptools bounds neither the size of a request head nor the time it takes to
arrive: a client that streams headers without end grows the server's memory without limit, and
one that opens connections and sends a byte now and then holds them for ever (its keep-alive
timeout only runs between requests). `GuardedHttpToolsProtocol` adds both limits: a head (request
line and headers) larger than ``max_head_bytes`` gets 431, one not complete within
``head_timeout_s`` of the connection opening or of its first byte gets 408; either way the
connection closes. Without httptools, uvicorn's h11 protocol runs with
``h11_max_incomplete_event_size`` (the size bound only). Slow bodies are the application's
business (`semipd.server.body_limit`).
"""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import json
from typing import Any

DEFAULT_MAX_HEAD_BYTES = 64 * 1024
DEFAULT_HEAD_TIMEOUT_S = 30.0
KEEP_ALIVE_TIMEOUT_S = 5
"""Seconds an idle keep-alive connection stays open between requests (uvicorn's default)."""

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


def raw_error_response(status: int, message: str, code: str) -> bytes:
    """A complete HTTP/1.1 response with an OpenAI error body, closing the connection."""
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": code}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))) + body


class _HeadTooLarge(Exception):
    pass


@functools.cache
def guarded_httptools_class() -> type:
    """`GuardedHttpToolsProtocol` (built on first use: importing uvicorn's httptools protocol needs httptools)."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """`HttpToolsProtocol` with a bound on the size and the arrival time of each request head."""

        def __init__(self, *args: Any, max_head_bytes: int, head_timeout_s: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.max_head_bytes = max_head_bytes
            self.head_timeout_s = head_timeout_s
            self._head_bytes = 0
            self._head_too_large = False
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_head_timer()  # a connection must send its first request in time too

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes = 0
            self._arm_head_timer()

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._disarm_head_timer()
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if not self._head_too_large:
                super().send_400_response(msg)
                return
            self.transport.write(raw_error_response(
                431, f"The request head is larger than the server accepts ({self.max_head_bytes} bytes).",
                "request_header_too_large"))
            self.transport.close()

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > self.max_head_bytes:
                self._head_too_large = True
                raise _HeadTooLarge  # httptools stops parsing; uvicorn answers through send_400_response

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self.cycle is None or self.cycle.response_complete:  # no response of ours is on the wire
                self.transport.write(raw_error_response(
                    408, f"The request head did not arrive within {self.head_timeout_s:g} s.", "request_timeout"))
            self.transport.close()

    return GuardedHttpToolsProtocol


def uvicorn_options(max_head_bytes: int = DEFAULT_MAX_HEAD_BYTES,
                    head_timeout_s: float = DEFAULT_HEAD_TIMEOUT_S) -> dict[str, Any]:
    """``uvicorn.Config`` keyword arguments: uvloop when installed, the guarded httptools protocol
    when httptools is installed (the ``server`` extra has both), else h11 with its head-size bound."""
    options: dict[str, Any] = {"timeout_keep_alive": KEEP_ALIVE_TIMEOUT_S}
    if importlib.util.find_spec("uvloop") is not None:
        options["loop"] = "uvloop"
    if importlib.util.find_spec("httptools") is not None:
        options["http"] = functools.partial(guarded_httptools_class(), max_head_bytes=max_head_bytes,
                                            head_timeout_s=head_timeout_s)
    else:
        options["http"] = "h11"
        options["h11_max_incomplete_event_size"] = max_head_bytes
    return options
