"""Operational behaviour of the server with an engine in this process: /semipd/status never waits
for a slow engine, the Prometheus gauges fall back to 0 once dropped streams have left an idle
engine, Retry-After follows the observed TTFT, and manual allocations report their snapping."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import httpx
import pytest
from test_server_support import FakeAsyncEngine, FakeSemiPDEngine, HealthProbe, running, wait_until

from semipd.allocation import SMAllocation
from semipd.engine import AsyncEngine, Engine, EngineConfig
from semipd.server import create_app

MODEL = "tiny"


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=512,
                               max_num_seqs=64))


def gauge(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return float(next(line for line in text.splitlines() if line.startswith(f"{name} ")).split()[-1])


def test_status_never_waits_for_a_slow_engine(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step holds the engine for 0.25 s, and so would reading its status: /semipd/status polled
    in a tight loop must still answer at once (from the snapshot), and /health with it."""
    held = threading.Lock()
    step, get_status = engine.step, engine.get_status

    def slow_step() -> Any:
        with held:
            time.sleep(0.25)
            return step()

    def locked_status() -> dict[str, Any]:
        with held:
            return get_status()

    monkeypatch.setattr(engine, "step", slow_step)
    monkeypatch.setattr(engine, "get_status", locked_status)
    async_engine = AsyncEngine(engine)
    with running(create_app(async_engine, MODEL)) as srv:
        body = {"prompt": [256, 1, 2], "max_tokens": 12, "ignore_eos": True}
        worker = threading.Thread(target=lambda: httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60))
        worker.start()
        assert wait_until(lambda: engine.has_unfinished())
        status_latencies = []
        with HealthProbe(srv.url) as probe, httpx.Client(base_url=srv.url) as client:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline:
                t = time.perf_counter()
                assert client.get("/semipd/status").status_code == 200
                status_latencies.append(time.perf_counter() - t)
        worker.join(timeout=60)
    assert sorted(status_latencies)[len(status_latencies) // 2] < 0.05 and max(status_latencies) < 0.2
    assert probe.p50 < 0.1 and max(probe.latencies) < 0.2, probe.latencies


def test_gauges_return_to_zero_after_dropped_streams(engine: Engine) -> None:
    async_engine = AsyncEngine(engine)
    with running(create_app(async_engine, MODEL)) as srv:
        async def drop_streams(n: int) -> None:
            async def one(client: httpx.AsyncClient) -> None:
                body = {"prompt": [256, 5, 6], "max_tokens": 1000, "ignore_eos": True, "stream": True}
                async with client.stream("POST", "/v1/completions", json=body) as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("data: "):
                            break

            async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=httpx.Limits(max_connections=n)) as c:
                await asyncio.gather(*(one(c) for _ in range(n)))

        asyncio.run(drop_streams(40))
        assert wait_until(lambda: not engine.has_unfinished(), timeout=10)
        names = ("semipd:num_requests_running", "semipd:num_requests_waiting", "semipd:kv_cache_usage_perc")
        assert wait_until(lambda: all(gauge(srv.url, name) == 0 for name in names), timeout=2, interval=0.1), \
            {name: gauge(srv.url, name) for name in names}
    assert engine.allocator.num_free == engine.allocator.num_blocks


def test_retry_after_follows_observed_ttft() -> None:
    fake = FakeAsyncEngine(max_waiting=1, first_token_delay=1.6)
    with running(create_app(fake, MODEL)) as srv:
        def refused_while_one_waits() -> httpx.Response:
            done: list[httpx.Response] = []
            first = threading.Thread(target=lambda: done.append(httpx.post(
                f"{srv.url}/v1/completions", json={"prompt": "a", "max_tokens": 1}, timeout=30)))
            first.start()
            assert wait_until(lambda: fake.active)
            refused = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "b", "max_tokens": 1}, timeout=30)
            first.join(timeout=30)
            assert done[0].status_code == 200
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "queue_full"
            return refused

        assert refused_while_one_waits().headers["Retry-After"] == "1"  # no TTFT observed yet
        assert refused_while_one_waits().headers["Retry-After"] == "2"  # the median TTFT is 1.6 s


class SnappingSemiPDEngine(FakeSemiPDEngine):
    """A fake whose partitions sit on a grid of 8%: a manual split snaps to the nearest."""

    def set_sm_allocation(self, allocation: SMAllocation) -> SMAllocation:
        prefill = min(96, max(8, 8 * round(allocation.prefill_percentage / 8)))
        self.allocation = SMAllocation(prefill, 100 - prefill)
        return self.allocation


def test_allocation_reports_requested_and_snapped() -> None:
    with running(create_app(SnappingSemiPDEngine(), MODEL)) as srv, httpx.Client(base_url=srv.url) as client:
        body = client.post("/semipd/allocation", json={"prefill_percentage": 50, "decode_percentage": 50}).json()
        assert body["allocation"] == {"prefill_percentage": 48, "decode_percentage": 52}
        assert body["requested"] == {"prefill_percentage": 50, "decode_percentage": 50} and body["snapped"] is True
        assert body["status"]["allocation"]["prefill_percentage"] == 48
        body = client.post("/semipd/allocation", json={"prefill_percentage": 64, "decode_percentage": 36}).json()
        assert body["allocation"]["prefill_percentage"] == 64 and body["snapped"] is False
