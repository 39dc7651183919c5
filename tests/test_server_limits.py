"""Request limits of the server around a fake engine: body size (413, before parsing, never buffered
whole), body upload time (408), text length (refused before tokenizing), number of chat messages,
big bodies parsed off the event loop, and text that is not valid Unicode (lone surrogates)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_server_support import (
    FakeAsyncEngine,
    FakeEngine,
    FakeTokenizer,
    HealthProbe,
    running,
    send_raw,
    status_of,
)

from semipd.server import create_app
from semipd.server.limits import ServerLimits, default_max_body_bytes, max_text_chars

MODEL = "fake-model"
MAX_MODEL_LEN = 128  # FakeEngine's


class CountingTokenizer(FakeTokenizer):
    """Records the length of every text it tokenizes or renders."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.seen.append(len(text))
        return super().encode(text, add_special_tokens)

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        self.seen.append(sum(len(m["content"]) for m in messages))
        return super().apply_chat_template(messages, add_generation_prompt, tokenize)


@pytest.fixture(scope="module")
def tokenizer() -> CountingTokenizer:
    return CountingTokenizer()


@pytest.fixture(scope="module")
def server(tokenizer: CountingTokenizer) -> Iterator[Any]:
    engine = FakeAsyncEngine(FakeEngine(tokenizer=tokenizer))
    with running(create_app(engine, MODEL)) as srv:
        yield srv


def error_of(answer: bytes) -> dict:
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]


def head(path: str, extra: str = "") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{extra}\r\n".encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_declared_body_over_the_default_limit_is_413_before_it_is_sent(server: Any) -> None:
    limit = default_max_body_bytes(MAX_MODEL_LEN)
    _, answer = send_raw(server.port, [head("/v1/completions", f"Content-Length: {100_000_000}\r\n")])
    assert status_of(answer) == 413
    err = error_of(answer)
    assert err["code"] == "request_too_large" and str(limit) in err["message"]
    assert b"connection: close" in answer.lower()


def test_streamed_body_is_cut_off_at_the_limit(server: Any) -> None:
    limit = default_max_body_bytes(MAX_MODEL_LEN)
    piece = b"x" * (256 * 1024)
    parts = [head("/v1/completions", "Transfer-Encoding: chunked\r\n"), chunk(b'{"prompt": "')]
    parts += [chunk(piece)] * (limit // len(piece) + 1)  # just past the limit, no more: the server reads it all
    _, answer = send_raw(server.port, parts)
    assert status_of(answer) == 413 and error_of(answer)["code"] == "request_too_large"
    assert httpx.post(f"{server.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200


def test_big_bodies_in_parallel_are_refused_while_health_stays_fast(server: Any) -> None:
    piece = chunk(b"y" * (1 << 20))
    parts = [head("/v1/completions", "Transfer-Encoding: chunked\r\n"), chunk(b'{"prompt": "')] + [piece] * 40
    total = sum(len(p) for p in parts)
    results: list[tuple[int, bytes]] = []
    with HealthProbe(server.url) as probe:
        senders = [threading.Thread(target=lambda: results.append(send_raw(server.port, parts))) for _ in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join(timeout=60)
    assert len(results) == 4
    for sent, answer in results:  # cut off long before the 40 MiB were sent (or answered 413 when they were)
        assert sent < total or status_of(answer) == 413
    assert probe.p50 < 0.1 and max(probe.latencies) < 1.0, probe.latencies


def test_body_limit_flag_and_body_timeout() -> None:
    limits = ServerLimits(max_body_bytes=1000, body_timeout_s=0.5)
    with running(create_app(FakeAsyncEngine(), MODEL, limits=limits)) as srv:
        big = {"prompt": "x" * 1000, "max_tokens": 1}
        assert httpx.post(f"{srv.url}/v1/completions", json=big).status_code == 413
        assert httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", "max_tokens": 1}).status_code == 200
        _, answer = send_raw(srv.port, [head("/v1/completions", "Content-Length: 100\r\n"), b'{"prompt": '])
        assert status_of(answer) == 408 and error_of(answer)["code"] == "request_timeout"
        parts = [head("/v1/completions", "Transfer-Encoding: chunked\r\n")] + [chunk(b" ")] * 10
        _, answer = send_raw(srv.port, parts, pause=0.1)  # a byte now and then is not enough
        assert status_of(answer) == 408
        assert httpx.get(f"{srv.url}/health").status_code == 200


def test_text_too_long_for_the_context_is_refused_before_tokenizing(server: Any,
                                                                    tokenizer: CountingTokenizer) -> None:
    too_long = max_text_chars(MAX_MODEL_LEN) + 1
    resp = httpx.post(f"{server.url}/v1/completions", json={"prompt": "z" * too_long})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    half = "z" * (too_long // 2 + 1)
    resp = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": [
        {"role": "system", "content": half}, {"role": "user", "content": half}]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    assert not [n for n in tokenizer.seen if n >= too_long // 2], tokenizer.seen


def test_too_many_chat_messages(server: Any, tokenizer: CountingTokenizer) -> None:
    calls = len(tokenizer.seen)
    messages = [{"role": "user", "content": ""}] * 4097
    resp = httpx.post(f"{server.url}/v1/chat/completions", json={"messages": messages})
    err = resp.json()["error"]
    assert resp.status_code == 400 and err["param"] == "messages" and err["code"] == "too_many_items"
    assert len(tokenizer.seen) == calls
    with running(create_app(FakeAsyncEngine(), MODEL, limits=ServerLimits(max_chat_messages=2))) as srv:
        chat = {"messages": [{"role": "user", "content": "a"}] * 2, "max_tokens": 1}
        assert httpx.post(f"{srv.url}/v1/chat/completions", json=chat).status_code == 200
        chat["messages"] = chat["messages"] * 2
        assert httpx.post(f"{srv.url}/v1/chat/completions", json=chat).json()["error"]["param"] == "messages"


def test_huge_chats_are_parsed_off_the_event_loop() -> None:
    body = json.dumps({"messages": [{"role": "user", "content": ""}] * 300_000}).encode()
    limits = ServerLimits(max_body_bytes=len(body) + 1)
    with running(create_app(FakeAsyncEngine(), MODEL, limits=limits)) as srv, HealthProbe(srv.url) as probe:
        answers: list[httpx.Response] = []
        posts = [threading.Thread(target=lambda: answers.append(httpx.post(
            f"{srv.url}/v1/chat/completions", content=body, timeout=60))) for _ in range(3)]
        for t in posts:
            t.start()
        for t in posts:
            t.join(timeout=60)
    assert [a.json()["error"]["param"] for a in answers] == ["messages"] * 3
    assert probe.p50 < 0.1 and max(probe.latencies) < 1.0, probe.latencies


SURROGATE = b"a\\ud800b"


@pytest.mark.parametrize("path, body, param", [
    ("/v1/completions", b'{"prompt": "' + SURROGATE + b'"}', "prompt"),
    ("/v1/completions", b'{"prompt": ["' + SURROGATE + b'"]}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "model": "' + SURROGATE + b'"}', "model"),
    ("/v1/completions", b'{"prompt": "x", "stop": ["' + SURROGATE + b'"]}', "stop"),
    ("/v1/completions", b'{"prompt": "x", "user": "\\udfff"}', "user"),
    ("/v1/completions", b'{"prompt": "x", "' + SURROGATE + b'": 1}', None),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "' + SURROGATE + b'"}]}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\ud83d"}]}]}',
     "messages"),
    ("/semipd/allocation", b'{"prefill_percentage": 50, "decode_percentage": 50, "\\ud800": 1}', None),
])
def test_lone_surrogates_are_400_naming_the_field(server: Any, path: str, body: bytes, param: str | None) -> None:
    resp = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    err = resp.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and "Unicode" in err["message"]
    good = httpx.post(f"{server.url}/v1/completions", content='{"prompt": "a\\ud83d\\ude00b", "max_tokens": 1}',
                      headers={"content-type": "application/json"})  # a surrogate pair is one valid character
    assert good.status_code == 200, good.text
