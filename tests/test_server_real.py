"""`semipd serve` for real: the CLI in a subprocess on CPU with the tiny preset and dummy weights,
driven by the official `openai` client, raw HTTP and schemathesis."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from test_server_support import wait_until

MODEL = "tiny-llama"
MAX_MODEL_LEN = 64


class ServeProcess:
    """``semipd serve`` with `extra` arguments on a free port (`wait_ready` waits for /health)."""

    def __init__(self, *extra: str, api_key: str | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        cmd = [sys.executable, "-m", "semipd.cli", "serve", "--model", MODEL, "--load-format", "dummy",
               "--device", "cpu", "--port", str(port), "--log-level", "warning", *extra]
        if api_key:
            cmd += ["--api-key", api_key]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self) -> ServeProcess:
        if not wait_until(self._healthy, timeout=120, interval=0.1) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"semipd serve did not start:\n{self.proc.stdout.read() if self.proc.stdout else ''}")
        return self

    def _healthy(self) -> bool:
        if self.proc.poll() is not None:
            return True  # exited: stop waiting, the check below fails
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def status(self) -> dict:
        return httpx.get(f"{self.url}/semipd/status", headers=self.headers, timeout=10).json()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[ServeProcess, ServeProcess]]:
    """The main server, and one with a waiting queue of 1 and an API key; started side by side."""
    procs = (ServeProcess("--max-model-len", str(MAX_MODEL_LEN), "--num-kv-blocks", "64", "--block-size", "16"),
             ServeProcess("--max-num-seqs", "1", "--max-waiting", "1", "--max-model-len", "2048",
                          "--num-kv-blocks", "256", "--max-body-bytes", "50000", "--max-chat-messages", "3",
                          "--allowed-origins", "https://app.example", api_key="k3y"))
    try:
        for proc in procs:
            proc.wait_ready()
        yield procs
    finally:
        for proc in procs:
            proc.stop()


@pytest.fixture(scope="module")
def server(servers: tuple[ServeProcess, ServeProcess]) -> ServeProcess:
    return servers[0]


@pytest.fixture(scope="module")
def oai(server: ServeProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_models(oai: openai.OpenAI) -> None:
    assert [m.id for m in oai.models.list()] == [MODEL]


def test_completion_stream_matches_non_stream(oai: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0,
              "extra_body": {"ignore_eos": True}}
    full = oai.completions.create(**kwargs)
    assert full.id.startswith("cmpl-") and full.model == MODEL and full.object == "text_completion"
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 12
    assert full.usage.total_tokens == full.usage.prompt_tokens + 12
    chunks = list(oai.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


def test_token_id_prompt(oai: openai.OpenAI) -> None:
    out = oai.completions.create(model=MODEL, prompt=[256, 72, 105], max_tokens=3, temperature=0,
                                 extra_body={"ignore_eos": True})
    assert out.usage.prompt_tokens == 3 and out.usage.completion_tokens == 3


def test_chat_stream_matches_non_stream(oai: openai.OpenAI) -> None:
    kwargs = {"model": MODEL, "messages": [{"role": "system", "content": "Be brief."},
                                           {"role": "user", "content": "Hello!"}],
              "max_completion_tokens": 8, "temperature": 0, "extra_body": {"ignore_eos": True}}
    full = oai.chat.completions.create(**kwargs)
    assert full.id.startswith("chatcmpl-") and full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 8
    chunks = list(oai.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens


def test_openai_client_sees_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=MODEL, prompt="x", max_tokens=10**6)
    assert err.value.body["param"] == "max_tokens"
    with pytest.raises(openai.NotFoundError):
        oai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as err:
        oai.completions.create(model=MODEL, prompt="x", n=2)
    assert err.value.body["param"] == "n"


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", b"{oops", 400, None),
    ("/v1/completions", {"prompt": "x", "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": -5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2**62}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "x" * 400}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 100000]}, 400, "prompt"),
    ("/v1/completions", {"prompt": "x", "model": "nope"}, 404, "model"),
    ("/v1/completions", {"prompt": "x", "echo": True}, 400, "echo"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]},
     400, "tools"),
    ("/semipd/allocation", {"prefill_percentage": 50, "decode_percentage": 50}, 400, None),
])
def test_bad_inputs(server: ServeProcess, path: str, body: object, status: int, param: str | None) -> None:
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    resp = httpx.post(f"{server.url}{path}", timeout=10, **kwargs)
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if param is not None:
        assert err["param"] == param
    good = httpx.post(f"{server.url}/v1/completions", json={"prompt": "ok", "max_tokens": 2}, timeout=10)
    assert good.status_code == 200
    assert server.status()["num_step_errors"] == 0


def test_disconnect_mid_stream_aborts_and_frees_blocks(servers: tuple[ServeProcess, ServeProcess]) -> None:
    proc = servers[1]
    body = {"prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    steps_before = proc.status()["num_steps"]
    with httpx.Client(base_url=proc.url, headers=proc.headers, timeout=30) as c, \
            c.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert wait_until(lambda: proc.status()["kv_cache"]["usage"] > 0, timeout=10)
    assert wait_until(lambda: proc.status()["kv_cache"]["usage"] == 0, timeout=10)
    status = proc.status()
    assert status["num_unfinished"] == 0 and status["kv_cache"]["num_free_blocks"] == status["kv_cache"]["num_blocks"]
    assert status["num_steps"] - steps_before < 1000, "the request ran on after its client left"


def test_metrics(server: ServeProcess) -> None:
    httpx.post(f"{server.url}/v1/completions", json={"prompt": "m", "max_tokens": 4, "ignore_eos": True}, timeout=10)
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    for name in ("semipd:time_to_first_token_seconds_count", "semipd:time_per_output_token_seconds_count",
                 "semipd:e2e_request_latency_seconds_count", "semipd:kv_cache_usage_perc",
                 "semipd:num_requests_running", "semipd:num_requests_waiting"):
        assert name in text, name
    ttft = next(line for line in text.splitlines() if line.startswith("semipd:time_to_first_token_seconds_count"))
    assert float(ttft.split()[-1]) >= 1


def test_gauges_return_to_zero_after_dropped_streams(server: ServeProcess) -> None:
    async def drop_streams(n: int) -> None:
        async def one(client: httpx.AsyncClient) -> None:
            body = {"prompt": "x", "max_tokens": 60, "ignore_eos": True, "stream": True}
            async with client.stream("POST", "/v1/completions", json=body) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data: "):
                        break

        async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=httpx.Limits(max_connections=n)) as c:
            await asyncio.gather(*(one(c) for _ in range(n)))

    def gauges() -> dict[str, float]:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
        names = ("semipd:num_requests_running", "semipd:num_requests_waiting", "semipd:kv_cache_usage_perc")
        return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line.startswith(names)}

    asyncio.run(drop_streams(12))
    assert wait_until(lambda: not any(gauges().values()), timeout=3, interval=0.1), gauges()


def test_limit_flags(servers: tuple[ServeProcess, ServeProcess]) -> None:
    proc = servers[1]
    url, auth = proc.url, proc.headers
    resp = httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 60_000}, headers=auth, timeout=10)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    chat = {"messages": [{"role": "user", "content": "x"}] * 4}
    resp = httpx.post(f"{url}/v1/chat/completions", json=chat, headers=auth, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    preflight = httpx.options(f"{url}/v1/completions", timeout=10, headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "https://app.example"


def test_queue_limit_and_api_key(servers: tuple[ServeProcess, ServeProcess]) -> None:
    proc = servers[1]
    url, auth = proc.url, proc.headers
    assert httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, timeout=10).status_code == 401
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    long_body = {"prompt": "x", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    short_body = {"prompt": "y", "max_tokens": 1}
    with httpx.Client(base_url=url, headers=auth, timeout=60) as c:
        with c.stream("POST", "/v1/completions", json=long_body) as running:
            lines = running.iter_lines()  # keep a reference: a collected iterator closes the stream
            next(line for line in lines if line.startswith("data: "))
            waiting: list[httpx.Response] = []
            t = threading.Thread(target=lambda: waiting.append(
                httpx.post(f"{url}/v1/completions", json=short_body, headers=auth, timeout=60)))
            t.start()
            assert wait_until(lambda: proc.status()["num_waiting_api"] >= 1)
            refused = httpx.post(f"{url}/v1/completions", json=short_body, headers=auth, timeout=10)
            assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
            assert refused.json()["error"]["code"] == "queue_full"
        t.join(timeout=60)
    assert waiting[0].status_code == 200 and waiting[0].json()["usage"]["completion_tokens"] == 1
    assert wait_until(lambda: proc.status()["kv_cache"]["usage"] == 0)


def test_fuzz_no_server_errors(server: ServeProcess) -> None:
    """Every operation of the server's OpenAPI schema, 15 generated requests each: no 5xx.
    (Driven through hypothesis directly, not schemathesis' pytest plugin, which breaks with
    newer pytest releases.)"""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True,
                  database=None)
        def check(case: schemathesis.Case) -> None:
            resp = case.call(timeout=30)
            assert resp.status_code < 500, \
                f"{case.method} {case.path} {json.dumps(case.body, default=str)}: {resp.text}"

        check()


def test_serving_after_fuzz(server: ServeProcess) -> None:
    """Runs after the fuzz test above (pytest keeps file order): the server still serves, nothing leaked."""
    resp = httpx.post(f"{server.url}/v1/completions", json={"prompt": "still here", "max_tokens": 2}, timeout=10)
    assert resp.status_code == 200
    status = server.status()
    assert status["engine_core_alive"] and status["num_step_errors"] == 0
    assert wait_until(lambda: server.status()["kv_cache"]["usage"] == 0)
