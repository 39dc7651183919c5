"""Connections as `semipd serve` runs them (`uvicorn_options`): request heads bounded in size (431)
and in arrival time (408, the connection closes), keep-alive unaffected; CORS preflights with an
API key."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_server_support import FakeAsyncEngine, running, send_raw, status_of

from semipd.server import create_app
from semipd.server.http_protocol import uvicorn_options

MODEL = "fake-model"
HEAD_TIMEOUT_S = 0.5


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    options = uvicorn_options(max_head_bytes=8192, head_timeout_s=HEAD_TIMEOUT_S)
    with running(create_app(FakeAsyncEngine(), MODEL), **options) as srv:
        yield srv


def test_endless_headers_get_431_and_the_connection_closes(server: Any) -> None:
    parts = [b"GET /health HTTP/1.1\r\nHost: x\r\n"] + [b"X-Filler: " + b"a" * 1000 + b"\r\n"] * 10_000
    sent, answer = send_raw(server.port, parts)
    assert sent < sum(len(p) for p in parts)
    assert status_of(answer) == 431
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_header_too_large"


@pytest.mark.parametrize("parts, pause", [
    ([], 0.0),  # a connection that never sends anything
    ([b"GET /health HTTP/1.1\r\n"] + [b"X-Slow: 1\r\n"] * 50, 0.1),  # a head that never ends
])
def test_slow_heads_get_408_and_the_connection_closes(server: Any, parts: list[bytes], pause: float) -> None:
    start = time.monotonic()
    _, answer = send_raw(server.port, parts, pause=pause)
    assert status_of(answer) == 408
    assert time.monotonic() - start < HEAD_TIMEOUT_S + 3


def test_keep_alive_connections_outlive_the_head_timeout(server: Any) -> None:
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 200
        time.sleep(HEAD_TIMEOUT_S * 2)
        assert client.get("/health").status_code == 200
        big = {"prompt": "x" * 20_000, "max_tokens": 1}  # a body is not part of the head
        assert client.post("/v1/completions", json=big).json()["error"]["param"] == "prompt"


PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, content-type"}


def test_preflight_is_not_401_with_an_api_key() -> None:
    with running(create_app(FakeAsyncEngine(), MODEL, api_key="k")) as srv:
        resp = httpx.options(f"{srv.url}/v1/completions", headers=PREFLIGHT)
        assert resp.status_code == 405  # no CORS configured: the route has no OPTIONS, but the key is not asked
        assert httpx.options(f"{srv.url}/v1/completions").status_code == 401  # not a preflight


def test_cors_with_allowed_origins() -> None:
    app = create_app(FakeAsyncEngine(), MODEL, api_key="k", allowed_origins=["https://app.example"])
    with running(app) as srv:
        resp = httpx.options(f"{srv.url}/v1/completions", headers=PREFLIGHT)
        assert resp.status_code == 200
        assert resp.headers["access-control-allow-origin"] == "https://app.example"
        assert "POST" in resp.headers["access-control-allow-methods"]
        assert "authorization" in resp.headers["access-control-allow-headers"].lower()
        refused = httpx.options(f"{srv.url}/v1/completions", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert refused.status_code == 400
        origin = {"Origin": "https://app.example"}
        resp = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 1},
                          headers={**origin, "Authorization": "Bearer k"})
        assert resp.status_code == 200 and resp.headers["access-control-allow-origin"] == "https://app.example"
        unauthorized = httpx.get(f"{srv.url}/v1/models", headers=origin)
        assert unauthorized.status_code == 401 and unauthorized.headers["access-control-allow-origin"]
