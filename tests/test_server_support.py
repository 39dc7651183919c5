"""Support for the server tests (no tests here): a fake AsyncEngine that streams known tokens,
and a real uvicorn server on a free port in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from semipd.allocation import SMAllocation
from semipd.engine.core.interface import QueueFullError, RequestFailedError
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.metrics import SemiPDMetricsCollector

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class FakeTokenizer:
    """Bytes as token ids, BOS 256; a chat template of ``role: content`` lines."""

    eos_token_ids = (257,)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([256] if add_special_tokens else []) + list(text.encode())

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            tokenize: bool = False) -> str | list[int]:
        if messages[-1]["role"] == "assistant" and add_generation_prompt:
            raise ValueError("the conversation must not end with an assistant message")
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode(text) if tokenize else text


@dataclass
class FakeModelConfig:
    vocab_size: int = 512


@dataclass
class FakeEngine:
    tokenizer: FakeTokenizer | None = field(default_factory=FakeTokenizer)
    max_model_len: int = 128
    model_config: FakeModelConfig = field(default_factory=FakeModelConfig)
    metrics_collector: SemiPDMetricsCollector = field(default_factory=SemiPDMetricsCollector)


class FakeAsyncEngine:
    """Streams the letters A, B, C... (token ids 65, 66, ...), one per `token_delay` seconds after
    `first_token_delay` (and, with `hold`, once the event is set); honours max_tokens and stop strings.
    Records every request and abort. At most `max_waiting` requests may be in flight at once (a
    stand-in for the engine's queue). A request whose prompt starts with token `FAIL_TOKEN` fails
    (RequestFailedError) after one token."""

    FAIL_TOKEN = 7

    def __init__(self, engine: FakeEngine | None = None, max_waiting: int = 64, token_delay: float = 0.0,
                 first_token_delay: float = 0.0, mode: str = "unified", hold: threading.Event | None = None) -> None:
        self.engine = engine or FakeEngine()
        self.max_waiting = max_waiting
        self.token_delay = token_delay
        self.first_token_delay = first_token_delay
        self.mode = mode
        self.hold = hold
        self.requests: dict[str, tuple[list[int], SamplingParams]] = {}
        self.active: set[str] = set()
        self.aborted: list[str] = []
        self.started = self.stopped = False

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.stopped = True

    @property
    def is_running(self) -> bool:
        return self.started and not self.stopped

    async def generate(self, rid: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        if len(self.active) >= self.max_waiting:
            raise QueueFullError(f"{len(self.active)} requests waiting (max_waiting={self.max_waiting})")
        collector = self.engine.metrics_collector
        self.requests[rid] = (list(prompt_token_ids), params)
        self.active.add(rid)
        collector.record_request_arrival(rid, len(prompt_token_ids))
        try:
            await asyncio.sleep(self.first_token_delay)
            while self.hold is not None and not self.hold.is_set():
                await asyncio.sleep(0.005)
            collector.record_prefill_start(rid)
            ids: list[int] = []
            text = ""
            for i in range(params.max_tokens):
                if i:
                    await asyncio.sleep(self.token_delay)
                    if prompt_token_ids[0] == self.FAIL_TOKEN:
                        raise RequestFailedError("step 3 failed (RuntimeError: boom); aborted 1 requests")
                if rid not in self.active:
                    return
                token = ord(LETTERS[i % 26])
                ids.append(token)
                new_text = chr(token)
                text += new_text
                if i == 0:
                    collector.record_first_token(rid)
                else:
                    collector.record_token(rid)
                reason = None
                stop = next((s for s in params.stop if s in text), None)
                if stop is not None:
                    cut = text.index(stop)
                    new_text = new_text[: max(0, len(new_text) - (len(text) - cut))]
                    text, reason = text[:cut], "stop"
                elif i + 1 == params.max_tokens:
                    reason = "length"
                if reason is not None:
                    collector.record_request_completion(rid, len(ids))
                    self.active.discard(rid)
                yield RequestOutput(rid=rid, new_token_ids=[token], new_text=new_text, token_ids=list(ids),
                                    text=text, finished=reason is not None, finish_reason=reason,
                                    num_prompt_tokens=len(prompt_token_ids), num_output_tokens=len(ids))
                if reason is not None:
                    return
        finally:
            self.active.discard(rid)

    def abort(self, rid: str) -> None:
        self.aborted.append(rid)
        if rid in self.active:
            self.active.discard(rid)
            self.engine.metrics_collector.record_request_abort(rid)

    def get_status(self) -> dict[str, Any]:
        return {"mode": self.mode, "num_running": len(self.active), "num_waiting": 0,
                "kv_cache_usage": len(self.active) / 100}


class FakeSemiPDEngine(FakeAsyncEngine):
    """A fake with SM partitions: manual allocations on a grid of 8% steps."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(mode="semi-pd", **kwargs)
        self.allocation = SMAllocation(50, 50)

    def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        if allocation.prefill_percentage % 8:
            raise ValueError(f"prefill_percentage must be a multiple of 8, got {allocation.prefill_percentage}")
        self.allocation = allocation
        return allocation

    def get_status(self) -> dict[str, Any]:
        return {**super().get_status(), "allocation": self.allocation.as_dict(), "controller": {"policy": "static"}}


class ServerThread:
    """A uvicorn server for `app` on 127.0.0.1 and a free port, in a background thread; `options`
    go to ``uvicorn.Config``."""

    def __init__(self, app: Any, **options: Any) -> None:
        # With the protocol set, asyncio sets TCP_NODELAY on accepted connections.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2, **options)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 60.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextmanager
def running(app: Any, **options: Any) -> Iterator[ServerThread]:
    server = ServerThread(app, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns its last value."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return bool(predicate())
        time.sleep(interval)
    return True


def send_raw(port: int, parts: list[bytes], pause: float = 0.0, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send `parts` on a new connection (`pause` seconds apart; stops early if the server closes), then
    read until the server closes it. Returns (bytes of `parts` sent, what the server answered; b"" if it
    reset the connection before anything could be read)."""
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            for part in parts:
                sock.sendall(part)
                sent += len(part)
                if pause:
                    time.sleep(pause)
        except OSError:
            pass
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return sent, answer


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer (None if there is none)."""
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer.split(b" ", 2)[1])


class HealthProbe:
    """Polls /health in a background thread while in a `with` block (at least 10 times); `latencies`
    in seconds."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.url = url
        self.interval = interval
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                t = time.perf_counter()
                assert client.get("/health").status_code == 200
                self.latencies.append(time.perf_counter() - t)
                time.sleep(self.interval)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        wait_until(lambda: len(self.latencies) >= 10, timeout=30)
        self._stop.set()
        self._thread.join(timeout=60)

    @property
    def p50(self) -> float:
        return sorted(self.latencies)[len(self.latencies) // 2]
