"""End to end: the benchmark client against a small fake OpenAI-compatible streaming server.

The server (aiohttp, its own thread and event loop, 127.0.0.1, a free port) streams
`max_tokens` chunks: the first after `ttft` seconds, the rest `itl` apart, then a finish
chunk, a usage chunk and ``[DONE]``. Every `fail_every`-th request gets HTTP 500 and every
`break_every`-th one an error chunk mid-stream; every `cut_every`-th stream ends after one
token without ``[DONE]``. With `status` it also answers ``GET /semipd/status`` as our server does,
and with `vocab_size` / `max_model_len` it refuses token ids and lengths as ours does.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from semipd.bench.client import Endpoint
from semipd.bench.datasets import PromptMaker, random_requests
from semipd.bench.runner import RunConfig, run_benchmark
from semipd.bench.stats import summarize
from semipd.cli import main

TTFT = 0.05
ITL = 0.02


class FakeServer:
    def __init__(self, fail_every: int = 0, break_every: int = 0, cut_every: int = 0,
                 status: dict[str, Any] | None = None, vocab_size: int | None = None,
                 max_model_len: int | None = None) -> None:
        self.fail_every = fail_every
        self.break_every = break_every
        self.cut_every = cut_every
        self.status = status
        self.vocab_size = vocab_size
        self.max_model_len = max_model_len
        self.payloads: list[dict] = []
        self.active = 0
        self.max_active = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> FakeServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/completions", self._generate)
        app.router.add_post("/v1/chat/completions", self._generate)
        if self.status is not None:
            app.router.add_get("/semipd/status", self._status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def _models(self, request: web.Request) -> web.Response:
        card = {"id": "fake-model", "object": "model"}
        if self.max_model_len is not None:
            card["max_model_len"] = self.max_model_len
        return web.json_response({"object": "list", "data": [card]})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self.status)

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.payloads.append(body)
        n = len(self.payloads)
        if self.fail_every and n % self.fail_every == 0:
            return web.json_response({"error": {"message": "injected failure", "code": 500}}, status=500)
        refusal = self._refusal(body)
        if refusal:
            return web.json_response({"error": {"message": refusal, "type": "invalid_request_error"}}, status=400)
        chat = request.path.endswith("/chat/completions")
        prompt = body["messages"][0]["content"] if chat else body["prompt"]
        prompt_tokens = len(prompt) if isinstance(prompt, list) else len(prompt.split())
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: dict | str) -> None:
            await resp.write(f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode())

        def choice(text: str, finish: str | None = None) -> dict:
            if chat:
                return {"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}
            return {"index": 0, "text": text, "finish_reason": finish}

        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if chat:
                await send({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
            await asyncio.sleep(TTFT)
            for i in range(body["max_tokens"]):
                if i:
                    await asyncio.sleep(ITL)
                if self.break_every and n % self.break_every == 0 and i == 1:
                    await send({"error": {"message": "injected stream error", "code": 500}})
                    return resp
                if self.cut_every and n % self.cut_every == 0 and i == 1:
                    return resp
                await send({"choices": [choice(f" t{i}")]})
            await send({"choices": [choice("", "length")]})
            usage = {"prompt_tokens": prompt_tokens, "completion_tokens": body["max_tokens"],
                     "total_tokens": prompt_tokens + body["max_tokens"]}
            await send({"choices": [], "usage": usage})
            await send("[DONE]")
            return resp
        finally:
            self.active -= 1


    def _refusal(self, body: dict) -> str:
        """Our server's refusals of token ids outside the vocabulary and of lengths past the context."""
        prompt = body.get("prompt")
        if self.vocab_size is not None and isinstance(prompt, list) and max(prompt) >= self.vocab_size:
            return f"token id {max(prompt)} is out of the vocabulary (size {self.vocab_size})"
        n = len(prompt) if isinstance(prompt, list) else len(str(prompt).split())
        if self.max_model_len is not None and n + body["max_tokens"] > self.max_model_len:
            return f"This model's maximum context length is {self.max_model_len} tokens; you requested {n} + " \
                   f"{body['max_tokens']}"
        return ""


@pytest.fixture
def server() -> Iterator[FakeServer]:
    srv = FakeServer(fail_every=5).start()
    yield srv
    srv.stop()


def _run(srv: FakeServer, n: int, output_len: int, concurrency: int | None = None, chat: bool = False):
    path = "/v1/chat/completions" if chat else "/v1/completions"
    endpoint = Endpoint(srv.url + path, "fake-model", chat=chat)
    maker = PromptMaker("text" if chat else "ids")
    requests = random_requests(n, 12, output_len, 0.0, np.random.default_rng(0), maker)
    config = RunConfig(max_concurrency=concurrency, show_progress=False)
    return run_benchmark(endpoint, requests, np.zeros(n), config)


def test_run_counts_failures_tokens_and_timings(server: FakeServer) -> None:
    result = _run(server, n=20, output_len=5)
    records = result.records
    assert [r.index for r in records] == list(range(20))
    failed = [r for r in records if not r.success]
    assert len(failed) == 4  # every fifth request the server saw
    assert all(r.error.startswith("HTTP 500") and "injected failure" in r.error for r in failed)
    ok = [r for r in records if r.success]
    for r in ok:
        assert r.usage_reported and r.output_tokens == 5 and r.input_tokens == 12
        assert len(r.itls) == 4
        assert TTFT <= r.ttft < TTFT + 1.0
        assert r.latency >= r.ttft + sum(r.itls) >= r.ttft + 4 * ITL * 0.8
    itls = np.concatenate([r.itls for r in ok])
    assert ITL * 0.5 <= np.median(itls) <= ITL * 3
    summary = summarize(records, result.duration, {"ttft": 10_000.0})
    assert (summary.completed, summary.failed, summary.total_output_tokens) == (16, 4, 80)
    assert summary.slo_attainment == pytest.approx(16 / 20)
    assert 0 < summary.metrics["tpot"].mean
    sent = server.payloads[0]
    assert sent["ignore_eos"] is True and sent["max_tokens"] == 5 and len(sent["prompt"]) == 12
    assert sent["stream_options"] == {"include_usage": True}


def test_concurrency_limit_is_respected(server: FakeServer) -> None:
    result = _run(server, n=8, output_len=3, concurrency=2)
    assert server.max_active <= 2
    assert summarize(result.records, result.duration).peak_concurrency <= 2
    sends = sorted(r.send_time for r in result.records)
    assert sends[-1] >= 3 * TTFT  # later requests waited for a slot


def test_chat_stream_and_mid_stream_errors() -> None:
    srv = FakeServer(break_every=3, cut_every=4).start()
    try:
        records = _run(srv, n=6, output_len=4, chat=True).records
    finally:
        srv.stop()
    errors = sorted(r.error for r in records if not r.success)
    assert errors == ["server error in stream: injected stream error"] * 2 + ["stream ended before [DONE]"]
    for r in (r for r in records if r.success):
        assert r.ttft >= TTFT  # the empty role chunk sent at once is not the first token
        assert r.output_tokens == 4 and len(r.itls) == 3
    assert srv.payloads[0]["messages"][0]["role"] == "user"


def test_unreachable_server_fails_every_request() -> None:
    srv = FakeServer().start()
    url = srv.url
    srv.stop()
    endpoint = Endpoint(url + "/v1/completions", "m")
    requests = random_requests(3, 4, 2, 0.0, np.random.default_rng(0), PromptMaker())
    result = run_benchmark(endpoint, requests, np.zeros(3), RunConfig(show_progress=False))
    assert all(not r.success and "Connect" in r.error for r in result.records)


def test_cli_run_writes_json(server: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "result.json"
    argv = ["bench", "--base-url", server.url, "--num-prompts", "10", "--random-input-len", "16",
            "--random-output-len", "3", "--request-rate", "200", "--goodput", "ttft:5000", "tpot:5000",
            "--metric-percentiles", "50,99", "--output-json", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "Serving Benchmark Result" in text and "Failed requests: 2" in text and "P99 TTFT (ms):" in text
    doc = json.loads(out.read_text())
    assert doc["model"] == "fake-model"  # discovered through /v1/models
    assert (doc["completed"], doc["failed"], doc["num_prompts"]) == (8, 2, 10)
    assert doc["slo_attainment"] == pytest.approx(0.8) and "p99_ttft_ms" in doc and "api_key" not in doc
    assert len(doc["requests"]) == 10
    first = doc["requests"][0]
    for key in ("send_time", "ttft", "itls", "latency", "input_tokens", "output_tokens", "error", "tpot"):
        assert key in first


def test_cli_sweep_writes_json_and_plot(server: FakeServer, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sweep.json"
    argv = ["bench", "sweep", "--base-url", server.url, "--model", "fake-model", "--request-rates", "100,50",
            "--num-prompts", "5", "--random-input-len", "8", "--random-output-len", "2",
            "--goodput", "ttft:5000", "--output-json", str(out), "--no-progress"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "attain" in text and "No swept rate reached 90% SLO attainment (ttft:5000 ms)" in text
    doc = json.loads(out.read_text())
    assert [p["request_rate"] for p in doc["points"]] == [50.0, 100.0]
    # Each rate sends 5 requests and the server fails every fifth it sees: attainment 0.8 < 0.9.
    assert all(p["slo_attainment"] == pytest.approx(0.8) for p in doc["points"])
    for point in doc["points"]:
        ((error, count),) = point["errors"].items()
        assert count == 1 and error.startswith("HTTP 500") and "injected failure" in error
    assert doc["capacity"]["highest_rate"] is None
    assert (tmp_path / "sweep.png").stat().st_size > 0


def test_cli_errors_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["bench", "--base-url", "http://127.0.0.1:9", "--model", "m", "--no-progress"]
    assert main([*base, "--goodput", "ttft"]) == 2
    assert "not KEY:MS" in capsys.readouterr().err
    assert main([*base, "--request-rate", "trace"]) == 2
    assert "trace timestamps need --dataset-name trace" in capsys.readouterr().err
    assert main([*base, "--backend", "openai-chat", "--random-prompt-format", "ids"]) == 2
    assert "text prompts" in capsys.readouterr().err
    assert main(["bench", "sweep", *base[1:], "--request-rates", "1,2"]) == 2
    assert "needs SLOs" in capsys.readouterr().err
    assert main(["bench", "sweep", *base[1:], "--request-rates", "1,x", "--goodput", "ttft:1"]) == 2
    assert "'x' is not a number" in capsys.readouterr().err


def test_bench_never_imports_torch() -> None:
    code = (
        "import sys, semipd.bench.cli, semipd.bench.plot\n"
        "from semipd.cli import build_parser\n"
        "build_parser(['bench']).parse_args(['bench'])\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
