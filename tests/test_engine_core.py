"""The engine in its own process (`EngineCoreClient` + the engine-core loop), on CPU with the tiny
preset: the API side never imports torch; streams, stop strings and aborts are exact; the core's
controller sees the latencies clients see; a dead core fails open requests and turns the client
unavailable; `semipd serve` stops both processes on SIGTERM and Ctrl-C and exits non-zero when
its core dies."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from test_server_support import wait_until

from semipd.engine import LLM, EngineConfig, SamplingParams
from semipd.engine.core.client import EngineCoreClient
from semipd.engine.core.interface import EngineUnavailableError, RequestFailedError

CONFIG = EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=128,
                      max_num_seqs=8, max_num_batched_tokens=64)
GREEDY = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def test_the_api_side_imports_no_torch() -> None:
    code = ("import sys; import semipd.server.app, semipd.server.cli, semipd.engine.core.client; "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


async def _collect(client: EngineCoreClient, rid: str, prompt: list[int], params: SamplingParams) -> list:
    return [out async for out in client.generate(rid, prompt, params)]


def test_core_streams_match_in_process_and_stop_strings_and_aborts_are_exact() -> None:
    prompts = [[5, 9, 13 + i, 2 * i + 1] for i in range(4)]
    llm = LLM("tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=128)
    ref = [o.token_ids for o in llm.generate(prompts, GREEDY)]
    ref_text = llm.generate([prompts[0]], GREEDY)[0].text
    stop = ref_text[3:5] if len(ref_text) >= 5 else None

    async def main() -> None:
        client = EngineCoreClient(CONFIG, status_interval_s=0.05)
        await client.start()
        try:
            assert client.is_running and client.core_pid != os.getpid() and client.vocab_size > 0
            streams = await asyncio.gather(*(_collect(client, f"r{i}", p, GREEDY) for i, p in enumerate(prompts)))
            for stream, expected in zip(streams, ref, strict=True):
                assert [len(o.new_token_ids) for o in stream] == [1] * len(expected)
                assert stream[-1].token_ids == expected and stream[-1].finish_reason == "length"
                assert "".join(o.new_text for o in stream) == stream[-1].text
            if stop:
                outs = await _collect(client, "s", prompts[0], SamplingParams(temperature=0.0, max_tokens=12,
                                                                              ignore_eos=True, stop=[stop]))
                assert outs[-1].finish_reason == "stop" and outs[-1].text == ref_text[:ref_text.index(stop)]
                assert all(stop not in o.new_text for o in outs)
            gen = client.generate("ab", prompts[1], SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True))
            first = await anext(gen)
            assert first.new_token_ids
            await gen.aclose()  # the client leaves: the request is aborted in the core
            assert client.num_waiting == 0
            deadline = time.monotonic() + 20
            while True:
                status = client.get_status()
                if status["num_unfinished"] == 0 and status["kv_cache"]["usage"] == 0 and \
                        status["controller_window"]["num_ttft_samples"] >= 5:
                    break
                assert time.monotonic() < deadline, status
                await asyncio.sleep(0.05)
            assert status["num_step_errors"] == 0 and status["engine_core_alive"]
            assert client.metrics_collector.get_current_window_metrics().num_ttft_samples >= 5
        finally:
            await client.stop()
        assert not client.is_running and client.exit_code == 0 and not client.died

    asyncio.run(main())


def test_a_dead_core_fails_open_requests_and_refuses_new_ones() -> None:
    async def main() -> None:
        client = EngineCoreClient(CONFIG, status_interval_s=0.05)
        died = asyncio.Event()
        client.on_core_death(died.set)
        await client.start()
        try:
            gen = client.generate("long", [1, 2, 3], SamplingParams(max_tokens=1500, ignore_eos=True))
            await anext(gen)
            os.kill(client.core_pid, signal.SIGKILL)
            with pytest.raises(RequestFailedError, match="exited"):
                while True:
                    await asyncio.wait_for(anext(gen), timeout=20)
            await asyncio.wait_for(died.wait(), timeout=5)
            assert client.died and not client.is_running and client.exit_code == -signal.SIGKILL
            with pytest.raises(EngineUnavailableError):
                await anext(client.generate("late", [1, 2], GREEDY))
        finally:
            await client.stop()

    asyncio.run(main())


class Serve:
    """`semipd serve` in its own process group (as a shell starts it), on a free port."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "semipd.cli", "serve", "--model", "tiny-llama", "--load-format", "dummy",
               "--device", "cpu", "--port", str(self.port), "--num-kv-blocks", "64", "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     start_new_session=True)
        assert wait_until(self._ready, timeout=120, interval=0.1), self.output()
        self.core_pid = httpx.get(f"{self.url}/semipd/status", timeout=5).json()["engine_core_pid"]

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(self.output())
        try:
            return httpx.get(f"{self.url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def output(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        return self.proc.communicate()[0]

    def wait(self, timeout: float = 30) -> int:
        """The server's exit code (it is killed when it does not exit within `timeout`); what it left
        of its process group stays, for the test to inspect, until `close`."""
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def close(self) -> None:
        """Kill whatever of the process group is left (a failed test must not leave servers behind)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=10)


@pytest.fixture
def serve() -> Iterator[Serve]:
    server = Serve()
    try:
        yield server
    finally:
        server.close()


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_serve_stops_both_processes(how: str, serve: Serve) -> None:
    assert not _gone(serve.core_pid) and serve.core_pid != serve.proc.pid
    if how == "SIGTERM":
        serve.proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(serve.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    code = serve.wait()
    out = serve.output()
    # uvicorn shuts down gracefully, then re-raises SIGTERM (exit by signal); Ctrl-C exits with 130
    assert code in ((0, -signal.SIGTERM) if how == "SIGTERM" else (0, 130)), out
    assert "Traceback" not in out, out
    assert wait_until(lambda: _gone(serve.core_pid), timeout=10), "the engine core outlived the server"


def test_serve_exits_non_zero_when_its_core_dies(serve: Serve) -> None:
    with httpx.Client(base_url=serve.url, timeout=30) as c, \
            c.stream("POST", "/v1/completions", json={"prompt": "x", "max_tokens": 800, "ignore_eos": True,
                                                       "stream": True}) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        os.kill(serve.core_pid, signal.SIGKILL)
        rest = list(lines)
    assert any('"engine_error"' in line for line in rest), rest[-3:]
    code = serve.wait()
    assert code == 1, serve.output()
