"""The Semi-PD engine on CPU with the tiny preset: two worker threads over one KV cache give the
same greedy tokens as the unified engine while partitions switch every few iterations; every
request finishes, every KV block comes back; aborts mid-flight and failing worker batches are
survived."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass

import pytest
from test_model_helpers import random_prompt

from semipd.engine import LLM, EngineConfig, SamplingParams, StepError
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.metrics import SemiPDPrometheusExporter

GREEDY = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
DEADLINE_S = 20.0


def make_engine(controller: str = "static", **overrides) -> SemiPDEngine:
    kwargs = dict(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256,
                  max_num_batched_tokens=48, max_num_seqs=8)
    kwargs.update(overrides)
    semipd = SemiPDConfig(controller=controller, monitoring_interval=0.05)
    return SemiPDEngine(EngineConfig(mode="semi-pd", semipd=semipd, **kwargs))


@pytest.fixture
def engine():
    e = make_engine()
    yield e
    e.stop()
    assert not e.prefill_worker.is_alive() and not e.decode_worker.is_alive()


def force_repartitions(engine: SemiPDEngine, every: int = 3) -> None:
    """Request a new split every `every` launch stretches (decode steps, prefill layers),
    cycling through the reachable ones."""
    pm = engine.partitions
    original = pm.begin_launch
    choices = pm.reachable_prefill_sms
    counter = itertools.count()

    def begin_launch(phase: str):
        n = next(counter)
        if n % every == 0:
            pm.request_sm_reallocation(pm.grid.allocation(choices[(n // every) % len(choices)]))
        return original(phase)

    pm.begin_launch = begin_launch


@dataclass
class Out:
    """One engine delta with the request's tokens so far."""

    rid: str
    new_token_ids: list[int]
    token_ids: list[int]
    finished: bool
    finish_reason: str | None


def run_to_completion(engine: SemiPDEngine, timeout: float = DEADLINE_S) -> dict[str, list[Out]]:
    """Step until nothing is unfinished; the outputs of each request, in order."""
    outs: dict[str, list[Out]] = {}
    deadline = time.monotonic() + timeout
    while engine.has_unfinished():
        assert time.monotonic() < deadline, f"stalled: {engine.get_status()}"
        for d in engine.step():
            stream = outs.setdefault(d.rid, [])
            so_far = (stream[-1].token_ids if stream else []) + list(d.new_token_ids)
            stream.append(Out(d.rid, list(d.new_token_ids), so_far, d.finished, d.finish_reason))
    return outs


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    return [random_prompt(3 + (7 * i) % 60, seed=seed + i) for i in range(n)]


def reference(ps: list[list[int]], params: SamplingParams = GREEDY, **kwargs) -> list[list[int]]:
    llm = LLM("tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256, **kwargs)
    return [o.token_ids for o in llm.generate(ps, params)]


def test_concurrent_requests_with_forced_repartitions_equal_unified(engine: SemiPDEngine) -> None:
    ps = prompts(24)
    force_repartitions(engine)
    moves: list[tuple[int, int]] = []  # (prefill iteration, split) at each prefill stretch
    worker = engine.prefill_worker
    original_move = worker._move

    def move(part):
        moves.append((worker.num_iterations, part.prefill_sms))
        return original_move(part)

    worker._move = move

    def feed() -> None:  # arrivals spread over time, from another thread
        for i, p in enumerate(ps):
            engine.add_request(f"r{i}", p, GREEDY)
            time.sleep(0.002)

    feeder = threading.Thread(target=feed)
    feeder.start()
    time.sleep(0.01)
    outs = run_to_completion(engine)
    feeder.join()
    outs.update(run_to_completion(engine))
    ref = reference(ps)
    for i, expected in enumerate(ref):
        stream = outs[f"r{i}"]
        assert stream[-1].finished and stream[-1].finish_reason == "length"
        assert sum((o.new_token_ids for o in stream), []) == stream[-1].token_ids == expected
        assert [len(o.new_token_ids) for o in stream] == [1] * len(expected)
    assert engine.allocator.num_free == engine.allocator.num_blocks
    engine.allocator.check_consistency()
    status = engine.get_status()
    assert status["partitions"]["num_reallocations"] >= 3
    assert status["partitions"]["switch_latency_ms"]["count"] >= 1
    assert status["workers"]["prefill"]["iterations"] > 5 and status["workers"]["decode"]["errors"] == 0
    splits_per_iteration: dict[int, set[int]] = {}
    for it, sms in moves:
        splits_per_iteration.setdefault(it, set()).add(sms)
    assert any(len(s) > 1 for s in splits_per_iteration.values()), "prefill never moved between layers"
    window = engine.metrics_collector.get_current_window_metrics()
    assert window.num_completed == 24 and window.num_ttft_samples == 24
    rec = engine.metrics_collector.get_request("r5")
    assert rec.arrival_time <= rec.prefill_start_time <= rec.first_token_time <= rec.decode_start_time
    assert rec.decode_start_time <= rec.completion_time and rec.output_length == GREEDY.max_tokens


def test_preemption_under_a_tiny_kv_pool_keeps_tokens() -> None:
    ps = [random_prompt(n, seed=100 + n) for n in (9, 14, 6, 11, 13)]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    ref = reference(ps, params)
    engine = make_engine(block_size=4, num_kv_blocks=20, kv_watermark=0.0)
    try:
        force_repartitions(engine, every=5)
        for i, p in enumerate(ps):
            engine.add_request(f"p{i}", p, params)
        outs = run_to_completion(engine)
        assert [outs[f"p{i}"][-1].token_ids for i in range(len(ps))] == ref
        assert engine.num_preemptions > 0
        assert engine.allocator.num_free == 20
    finally:
        engine.stop()


def test_seeded_sampling_and_stop_token_ids_match_unified(engine: SemiPDEngine) -> None:
    params = [SamplingParams(temperature=0.9, top_k=40, seed=7, max_tokens=12),
              SamplingParams(temperature=0.0, max_tokens=30, stop_token_ids=[5, 17, 99])]
    ps = prompts(2, seed=40)
    llm = LLM("tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256)
    ref = [(o.token_ids, o.finish_reason) for o in llm.generate(ps, params)]
    for i, (p, sp) in enumerate(zip(ps, params, strict=True)):
        engine.add_request(f"s{i}", p, sp)
    outs = run_to_completion(engine)
    assert [(outs[f"s{i}"][-1].token_ids, outs[f"s{i}"][-1].finish_reason) for i in range(2)] == ref


def test_aborts_mid_flight_free_blocks(engine: SemiPDEngine) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
    for i in range(6):
        engine.add_request(f"a{i}", random_prompt(40 + i, seed=i), long)
    engine.add_request("short", random_prompt(5, seed=9), SamplingParams(max_tokens=8, ignore_eos=True))
    seen: dict[str, int] = {}
    deadline = time.monotonic() + DEADLINE_S
    while min(seen.get(f"a{i}", 0) for i in range(6)) < 3:
        assert time.monotonic() < deadline
        for out in engine.step():
            seen[out.rid] = seen.get(out.rid, 0) + 1
    assert engine.allocator.num_free < engine.allocator.num_blocks
    engine.abort("a1")
    engine.abort("a4")
    engine.abort("unknown")
    with pytest.raises(ValueError, match="already running"):
        engine.add_request("a0", [1, 2], GREEDY)
    after = run_until(engine, lambda: engine.num_unfinished == 5)
    assert "a1" not in after and "a4" not in after
    for i in (0, 2, 3, 5):
        engine.abort(f"a{i}")
    outs = run_to_completion(engine)
    assert all(o.rid == "short" for o in outs.get("short", []))
    assert engine.allocator.num_free == engine.allocator.num_blocks
    engine.allocator.check_consistency()
    assert engine.metrics_collector.get_stats()["num_aborted_total"] == 6


def run_until(engine: SemiPDEngine, done, timeout: float = DEADLINE_S) -> set[str]:
    """Step until `done()` (and all aborts applied); the ids that produced outputs meanwhile."""
    rids: set[str] = set()
    deadline = time.monotonic() + timeout
    while not done() or engine._book.has_pending_aborts():
        assert time.monotonic() < deadline
        rids.update(o.rid for o in engine.step())
    return rids


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_a_worker_exception_is_survived(engine: SemiPDEngine, phase: str, monkeypatch: pytest.MonkeyPatch) -> None:
    worker = engine.prefill_worker if phase == "prefill" else engine.decode_worker
    failures = iter([True])

    if phase == "prefill":
        original = worker.runner.launch

        def broken(batch, *args, **kwargs):
            if next(failures, False):
                raise RuntimeError("device fell over")
            return original(batch, *args, **kwargs)

        monkeypatch.setattr(worker.runner, "launch", broken)
    else:
        original = worker.launch_step

        def broken(batch, key, host=None, previous=None):
            if next(failures, False):
                raise RuntimeError("device fell over")
            return original(batch, key, host, previous)

        monkeypatch.setattr(worker, "launch_step", broken)
    ps = prompts(4, seed=70)
    for i, p in enumerate(ps):
        engine.add_request(f"f{i}", p, GREEDY)
    outs: dict[str, list] = {}
    failed: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    while engine.has_unfinished():
        assert time.monotonic() < deadline
        try:
            for out in engine.step():
                outs.setdefault(out.rid, []).append(out)
        except StepError as exc:
            assert "device fell over" in str(exc) and isinstance(exc.__cause__, RuntimeError)
            failed.extend(exc.rids)
    assert failed and set(failed).isdisjoint(rid for rid, o in outs.items() if o[-1].finished)
    assert len(failed) + sum(1 for o in outs.values() if o[-1].finished) == 4
    assert worker.is_alive() and worker.num_errors == 1 and "device fell over" in worker.last_error
    assert engine.allocator.num_free == engine.allocator.num_blocks
    assert engine.metrics_collector.get_stats()["num_failed_total"] == len(failed)
    engine.add_request("after", ps[0], GREEDY)  # the engine still works
    assert run_to_completion(engine)["after"][-1].token_ids == reference([ps[0]])[0]


def test_set_allocation_status_and_exporter() -> None:
    engine = make_engine(controller="slo")
    try:
        exporter = SemiPDPrometheusExporter(engine.metrics_collector)
        engine.bind_exporter(exporter)
        assert engine.get_status()["controller"]["running"]
        applied = engine.set_allocation(33.0, 67.0)
        assert applied.prefill_percentage == 30.0 and applied.decode_percentage == 70.0
        status = engine.get_status()
        assert status["mode"] == "semi-pd" and status["controller"]["mode"] == "static"
        assert not status["controller"]["running"]
        assert status["allocation"]["prefill_sms"] == 30 and status["allocation"]["backend"] == "none"
        assert status["partitions"]["unavailable_reason"].startswith("no CUDA device")
        with pytest.raises(ValueError, match="prefill_percentage"):
            engine.set_allocation(0.0, 100.0)
        engine.add_request("x", [1, 2, 3], GREEDY)
        run_to_completion(engine)
        text = exporter.render().decode()
        assert 'semipd:sm_reallocations_total{result="success"} 1.0' in text
        assert 'semipd:sm_allocation_percent{phase="prefill"} 30.0' in text
    finally:
        engine.stop()


def test_slo_controller_runs_and_off_has_no_partitions() -> None:
    engine = make_engine(controller="slo")
    try:
        engine.add_request("c", [1, 2, 3], GREEDY)
        run_to_completion(engine)
        deadline = time.monotonic() + DEADLINE_S
        while not engine.get_status()["controller"]["recent_decisions"]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        engine.stop()
    off = make_engine(controller="off")
    try:
        status = off.get_status()
        assert status["controller"] == {"mode": "off"} and status["partitions"]["reachable_prefill_sms"] == [50]
        with pytest.raises(ValueError, match="controller 'off'"):
            off.set_allocation(60.0, 40.0)
        off.add_request("o", [4, 5], GREEDY)
        assert run_to_completion(off)["o"][-1].token_ids == reference([[4, 5]])[0]
    finally:
        off.stop()


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="controller"):
        SemiPDConfig(controller="dynamic")
    with pytest.raises(ValueError, match="slo_tpot_ms"):
        SemiPDConfig(slo_tpot_ms=0)
    with pytest.raises(ValueError, match="min_prefill_percent"):
        SemiPDConfig(min_prefill_percent=70, max_prefill_percent=60)
    with pytest.raises(ValueError, match="max_prefill_percent"):
        SemiPDConfig(max_prefill_percent=101)
    with pytest.raises(ValueError, match="reachable_prefill_sms"):
        SemiPDConfig(reachable_prefill_sms=[32, 64])
    with pytest.raises(ValueError, match="gil_switch_interval_s"):
        SemiPDConfig(gil_switch_interval_s=0)
    with pytest.raises(ValueError, match="prefill_launch_lookahead_layers"):
        SemiPDConfig(prefill_launch_lookahead_layers=0)
    with pytest.raises(ValueError, match="decode_borrows_idle_prefill"):
        SemiPDConfig(decode_borrows_idle_prefill="yes")


def test_semipd_flags_reach_the_config() -> None:
    import argparse

    from semipd.engine.semi_pd.config import add_semipd_arguments, semipd_config_from_args

    parser = argparse.ArgumentParser()
    add_semipd_arguments(parser)
    assert semipd_config_from_args(parser.parse_args([])).decode_borrows_idle_prefill is True
    cfg = semipd_config_from_args(parser.parse_args(["--no-decode-borrow", "--controller", "static"]))
    assert cfg.decode_borrows_idle_prefill is False and cfg.controller == "static"
    default = semipd_config_from_args(parser.parse_args([]))
    assert (default.min_prefill_percent, default.max_prefill_percent) == (0.0, 100.0)  # the whole range
    assert semipd_config_from_args(parser.parse_args(["--max-prefill-percent", "80"])).max_prefill_percent == 80.0
    with pytest.raises(ValueError, match="reachable_prefill_sms"):
        SemiPDEngine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=16,
                                  mode="semi-pd", semipd=SemiPDConfig(reachable_prefill_sms=(25,))))
    with pytest.raises(ValueError, match="semipd options need mode 'semi-pd'"):
        EngineConfig(model="tiny-llama", semipd=SemiPDConfig())
    with pytest.raises(ValueError, match="runs mode 'semi-pd'"):
        SemiPDEngine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu"))


def test_reachable_splits() -> None:
    from semipd.allocation import HOPPER_MIN_SMS, HOPPER_SPLIT_GRANULARITY, SMGrid
    from semipd.engine.semi_pd.startup import CPU_GRID, reachable_splits

    h100 = SMGrid(132, HOPPER_SPLIT_GRANULARITY, HOPPER_MIN_SMS)  # the green-context grid of an H100
    # By default the whole grid: decode down to 16 SMs, prefill up to 116 (13 partitions, within the
    # default max_graph_partitions); --max-prefill-percent still caps it.
    assert reachable_splits(h100, SemiPDConfig()) == list(range(16, 117, 8))
    assert len(reachable_splits(h100, SemiPDConfig())) <= SemiPDConfig().max_graph_partitions
    assert reachable_splits(h100, SemiPDConfig(min_prefill_percent=20, max_prefill_percent=80)) == list(
        range(32, 105, 8))
    assert reachable_splits(h100, SemiPDConfig(reachable_prefill_sms=(96, 32), initial_prefill_sm_percent=48)) == [
        32, 64, 96]
    assert reachable_splits(h100, SemiPDConfig(controller="off", initial_prefill_sm_percent=70)) == [96]
    assert reachable_splits(CPU_GRID, SemiPDConfig(min_prefill_percent=10, max_prefill_percent=90)) == list(
        range(10, 100, 10))
    with pytest.raises(ValueError, match=r"\[36\] are not splits"):
        reachable_splits(h100, SemiPDConfig(reachable_prefill_sms=(36,)))


def test_probes_run_on_the_engine_path(engine: SemiPDEngine) -> None:
    from semipd.engine.semi_pd.probe import interference, sm_scaling_table

    rows = sm_scaling_table(engine, prefill_tokens=32, decode_batch=4, context=40, prefill_reps=1, decode_reps=2)
    assert [r["prefill_sms"] for r in rows] == engine.partitions.reachable_prefill_sms
    assert all(r["prefill32_ms"] > 0 and r["decode4_ctx40_ms"] > 0 for r in rows)
    res = interference(engine, 50, prefill_tokens=32, decode_batch=4, context=40, seconds=0.05)
    assert res["decode_steps_together"] > 0 and res["slowdown"] > 0
    assert engine.allocator.num_free == engine.allocator.num_blocks
    engine.add_request("busy", [1, 2], GREEDY)
    with pytest.raises(RuntimeError, match="idle"):
        sm_scaling_table(engine)
    run_to_completion(engine)


def test_async_engine_drives_the_semipd_engine(engine: SemiPDEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from semipd.engine import AsyncEngine, RequestFailedError

    a = AsyncEngine(engine, max_waiting=16)
    a.start()
    ps = prompts(3, seed=90)
    long = SamplingParams(temperature=0.0, max_tokens=500, ignore_eos=True)
    failures = iter([True])
    original = engine.decode_worker.launch_step

    def flaky(batch, key, host=None, previous=None):
        if len(batch.decodes) == 1 and batch.decodes[0].rid == "victim" and next(failures, False):
            raise RuntimeError("injected failure")
        return original(batch, key, host, previous)

    async def collect(rid, prompt, params):
        return [o async for o in a.generate(rid, prompt, params)]

    async def main():
        streams = await asyncio.gather(*(collect(f"s{i}", p, GREEDY) for i, p in enumerate(ps)))
        outs = []
        async for out in a.generate("ab", ps[0], long):
            outs.append(out)
            if len(outs) == 3:
                a.abort("ab")
        monkeypatch.setattr(engine.decode_worker, "launch_step", flaky)
        with pytest.raises(RequestFailedError, match="injected failure"):
            await collect("victim", ps[1], GREEDY)
        return streams, outs

    try:
        streams, aborted = asyncio.run(main())
        assert [s[-1].token_ids for s in streams] == reference(ps)
        assert aborted[-1].finish_reason == "abort" and len(aborted) < 100
        deadline = time.monotonic() + DEADLINE_S
        while engine.has_unfinished() or engine.allocator.num_free != engine.allocator.num_blocks:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        status = a.get_status()
        assert status["engine_thread_alive"] and status["num_step_errors"] == 1 and status["mode"] == "semi-pd"
    finally:
        a.stop()


def test_llm_cli_and_server_client_reach_semipd(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from semipd.allocation import SMAllocation
    from semipd.cli import main
    from semipd.engine import AsyncEngine, Engine, create_engine
    from semipd.engine.core.in_process import InProcessClient
    from semipd.engine.core.interface import NoPartitionsError

    ps = prompts(3, seed=120)
    llm = LLM("tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256, mode="semi-pd",
              semipd=SemiPDConfig(controller="static", initial_prefill_sm_percent=70))
    try:
        assert isinstance(llm.engine, SemiPDEngine)
        assert [o.token_ids for o in llm.generate(ps, GREEDY)] == reference(ps)
        client = InProcessClient(AsyncEngine(llm.engine))
        applied = asyncio.run(client.set_sm_allocation(SMAllocation(40, 60)))
        assert llm.engine.get_status()["allocation"]["prefill_sms"] == 40
        assert applied == llm.engine.partitions.current_allocation()
    finally:
        llm.engine.stop()
    unified = create_engine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=16))
    assert type(unified) is Engine
    with pytest.raises(NoPartitionsError):
        asyncio.run(InProcessClient(AsyncEngine(unified)).set_sm_allocation(SMAllocation(40, 60)))
    rc = main(["generate", "--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--mode", "semi-pd",
               "--controller", "static", "--prompt", "Hi", "--max-tokens", "4", "--ignore-eos", "--json"])
    assert rc == 0 and len(json.loads(capsys.readouterr().out)["token_ids"]) == 4


def test_decode_borrows_the_whole_device_only_while_prefill_is_idle(engine: SemiPDEngine) -> None:
    from semipd.engine.semi_pd.decode_worker import WholeDeviceBorrow

    worker = engine.decode_worker
    keys: list[tuple[object, bool]] = []  # (graph key, prefill had work at the decision)
    decisions: list[bool] = []

    def prefill_idle() -> bool:
        idle = not engine.prefill_scheduler.has_work()
        decisions.append(idle)
        return idle

    worker.borrow = WholeDeviceBorrow(None, "whole", prefill_idle)
    original = worker.launch_step

    def launch_step(batch, key, host=None, previous=None):
        keys.append((key, decisions[-1]))
        return original(batch, key, host, previous)

    worker.launch_step = launch_step
    ps = prompts(12, seed=40)
    long = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
    engine.add_request("first", ps[0], long)
    outs = run_to_completion(engine)  # alone: prefill idle for most of its decode steps
    for i, p in enumerate(ps[1:]):  # then a burst: prefill busy while decode runs
        engine.add_request(f"b{i}", p, long)
    outs.update(run_to_completion(engine))
    assert worker.num_borrowed_steps == sum(1 for k, _ in keys if k == "whole") > 0
    assert all((k == "whole") == idle for k, idle in keys)
    assert any(k != "whole" for k, _ in keys)
    ref = reference(ps, long)
    assert [outs["first"][-1].token_ids] + [outs[f"b{i}"][-1].token_ids for i in range(11)] == ref
    assert engine.get_status()["workers"]["decode"]["borrowed_steps"] == worker.num_borrowed_steps
    assert engine.allocator.num_free == engine.allocator.num_blocks


def test_prefill_warm_up_runs_every_partition_and_returns_its_blocks(engine: SemiPDEngine) -> None:
    from semipd.engine.semi_pd.startup import warm_prefill_streams

    worker = engine.prefill_worker
    calls = []
    original = worker.runner.launch

    def launch(batch, **kwargs):
        calls.append([(c.start, c.num_tokens) for c in batch.prefills])
        return original(batch, **kwargs)

    worker.runner.launch = launch
    seconds = warm_prefill_streams(worker.runner, worker.throttle, engine.partitions, engine.allocator,
                                   engine.model_config.vocab_size, 48, 4)
    assert seconds >= 0 and engine.allocator.num_free == engine.allocator.num_blocks
    assert calls[0] == [(0, 37)] and calls[1:3] == [[(0, 24)], [(24, 24)]]
    assert calls[3:] == [[(0, 48)]] * len(engine.partitions.partitions())
    ps = prompts(2, seed=5)  # the engine still serves correctly afterwards
    for i, p in enumerate(ps):
        engine.add_request(f"w{i}", p, GREEDY)
    outs = run_to_completion(engine)
    assert [outs[f"w{i}"][-1].token_ids for i in range(2)] == reference(ps)


def test_a_stopped_engine_is_collected() -> None:
    import gc
    import weakref

    e = make_engine()
    ref = weakref.ref(e)
    e.stop()
    del e
    gc.collect()
    assert ref() is None  # nothing (the GC freeze included) keeps its model and KV cache alive


def test_a_waiting_step_returns_when_interrupted() -> None:
    from semipd.engine.semi_pd.request_book import RequestBook

    book = RequestBook()
    got: list = []
    t = threading.Thread(target=lambda: got.append((book.take(30.0), time.monotonic())))
    t.start()
    time.sleep(0.05)
    start = time.monotonic()
    book.interrupt()
    t.join(5.0)
    assert got and got[0][0] == [] and got[0][1] - start < 2.0
