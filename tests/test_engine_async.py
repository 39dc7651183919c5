"""AsyncEngine on CPU with the tiny preset: streaming, abort (blocks back), the waiting-queue
limit, invalid requests, and a failing step that ends its requests without killing the thread."""

from __future__ import annotations

import asyncio
import threading

import pytest

from semipd.engine import AsyncEngine, Engine, EngineConfig, QueueFullError, RequestFailedError, SamplingParams


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256))


@pytest.fixture
def aengine(engine: Engine):
    a = AsyncEngine(engine, max_waiting=4)
    a.start()
    yield a
    a.stop()
    assert engine.allocator.num_free == engine.allocator.num_blocks


async def _collect(a: AsyncEngine, rid: str, prompt: list[int], params: SamplingParams) -> list:
    return [out async for out in a.generate(rid, prompt, params)]


def test_streaming_matches_offline(aengine: AsyncEngine, engine: Engine) -> None:
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)

    async def main():
        return await asyncio.gather(*(_collect(aengine, f"s{i}", [256, 10 + i, 20], params) for i in range(3)))

    streams = asyncio.run(main())
    for outs in streams:
        assert [len(o.new_token_ids) for o in outs] == [1] * 12
        assert outs[-1].finished and outs[-1].finish_reason == "length"
        assert sum((o.new_token_ids for o in outs), []) == outs[-1].token_ids
        assert "".join(o.new_text for o in outs) == outs[-1].text
    aengine.stop()  # the synchronous API on the same engine, once the thread is gone
    engine.add_request("ref", [256, 10, 20], params)
    tokens: list[int] = []
    while engine.has_unfinished():
        for delta in engine.step():
            tokens += delta.new_token_ids
    assert tokens == streams[0][-1].token_ids


def test_abort_mid_stream_frees_blocks(aengine: AsyncEngine, engine: Engine) -> None:
    async def main():
        outs = []
        async for out in aengine.generate("ab", [256] + list(range(60)), SamplingParams(max_tokens=500,
                                                                                        ignore_eos=True)):
            outs.append(out)
            if len(outs) == 3:
                aengine.abort("ab")
        return outs

    outs = asyncio.run(main())
    assert outs[-1].finished and outs[-1].finish_reason == "abort"
    assert len(outs[-1].token_ids) >= 3 and len(outs) < 100
    assert _settle(aengine)


def test_closing_the_stream_aborts(aengine: AsyncEngine, engine: Engine) -> None:
    async def main():
        gen = aengine.generate("gone", [256, 1, 2], SamplingParams(max_tokens=500, ignore_eos=True))
        await gen.__anext__()
        await gen.aclose()  # a client that disconnects

    asyncio.run(main())
    assert _settle(aengine)


def _settle(a: AsyncEngine, timeout: float = 5.0) -> bool:
    """Wait until the engine holds no request and no block."""
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        s = a.get_status()
        if s["num_unfinished"] == 0 and s["kv_cache"]["usage"] == 0 and s["num_pending"] == 0:
            return True
        done.wait(0.01)
    return False


def test_queue_limit_and_invalid_requests(engine: Engine) -> None:
    a = AsyncEngine(engine, max_waiting=2)  # not started: nothing drains the inbox

    async def main():
        with pytest.raises(RequestFailedError, match="not running"):
            await _collect(a, "x", [1], SamplingParams())
        a.start()
        with pytest.raises(ValueError, match="empty"):
            await _collect(a, "bad", [], SamplingParams())
        with pytest.raises(ValueError, match="max_model_len"):
            await _collect(a, "long", [1] * 5000, SamplingParams())
        # Fill the inbox while the engine thread is held, then one more is refused.
        with a._engine_lock:
            gens = [a.generate(f"q{i}", [256, i], SamplingParams(max_tokens=2)) for i in range(3)]
            tasks = [asyncio.ensure_future(g.__anext__()) for g in gens[:2]]
            await asyncio.sleep(0.05)
            with pytest.raises(QueueFullError):
                await gens[2].__anext__()
        for t in tasks:
            await t
        for g in gens[:2]:
            async for _ in g:
                pass

    try:
        asyncio.run(main())
        assert _settle(a)
    finally:
        a.stop()


def test_failing_step_fails_its_requests_and_the_thread_survives(aengine: AsyncEngine, engine: Engine,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    real_launch = engine.runner.launch
    calls = {"n": 0}

    def flaky(batch, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected failure")
        return real_launch(batch, *args, **kwargs)

    monkeypatch.setattr(engine.runner, "launch", flaky)

    async def main():
        with pytest.raises(RequestFailedError, match="injected failure"):
            await _collect(aengine, "victim", [256, 3], SamplingParams(max_tokens=5, ignore_eos=True))
        return await _collect(aengine, "after", [256, 4], SamplingParams(max_tokens=5, ignore_eos=True))

    outs = asyncio.run(main())
    assert outs[-1].finished and len(outs[-1].token_ids) == 5
    status = aengine.get_status()
    assert status["engine_thread_alive"] and status["num_step_errors"] == 1
    assert "injected failure" in status["last_error"]
