"""The Semi-PD benchmark's load driver and statistics, on CPU with the tiny preset (the
benchmark itself needs a GPU)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from semipd.engine import Engine, EngineConfig
from semipd.engine.semi_pd.config import SemiPDConfig
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.workload import WorkloadRequest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_semipd.py"
_spec = importlib.util.spec_from_file_location("bench_semipd", _PATH)
bench = importlib.util.module_from_spec(_spec)
sys.modules["bench_semipd"] = bench  # dataclasses look their module up
_spec.loader.exec_module(bench)

TRACE = [WorkloadRequest(0.0, n, o) for n, o in ((12, 5), (40, 9), (3, 1), (25, 14))]
CONFIG = dict(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=256, max_num_batched_tokens=64)


def test_make_requests_is_seeded_poisson_over_trace_lengths() -> None:
    a = bench.make_requests(TRACE, 40.0, 1.0, 512, seed=3)
    assert a == bench.make_requests(TRACE, 40.0, 1.0, 512, seed=3)
    assert 15 < len(a) < 80 and all(0 <= t < 1.0 for t, _, _ in a)
    assert {(len(p), o) for _, p, o in a} <= {(r.input_len, r.output_len) for r in TRACE}


@pytest.mark.parametrize("kind", ["unified", "semi-pd"])
def test_drive_runs_every_request_to_completion(kind: str) -> None:
    engine = Engine(EngineConfig(**CONFIG)) if kind == "unified" else SemiPDEngine(
        EngineConfig(**CONFIG, mode="semi-pd", semipd=SemiPDConfig(controller="static")))
    try:
        reqs = bench.make_requests(TRACE, 30.0, 0.5, 512, seed=1)
        records, wall = bench.drive(engine, reqs, drain_s=20.0)
        stats = bench.summarize(records)
        assert stats["finished"] == stats["requests"] == len(reqs)
        assert [r.num_out for r in records] == [o for _, _, o in reqs]
        assert all(r.first >= r.arrival for r in records)
        assert len(stats["ttft_ms_p50_p90_p99"]) == 3 and stats["output_tokens_per_s"] > 0
        assert 0 <= stats["slo_attainment"]["500_50"] <= 1
        assert engine.allocator.num_free == engine.allocator.num_blocks
    finally:
        if isinstance(engine, SemiPDEngine):
            engine.stop()


def test_summarize_counts_unfinished_requests_as_misses() -> None:
    done = bench.Record(arrival=0.0, num_out=3, first=0.05, last=0.09, finished=True)
    slow = bench.Record(arrival=0.0, num_out=3, first=0.6, last=0.7, finished=True)
    lost = bench.Record(arrival=0.5)
    stats = bench.summarize([done, slow, lost])
    assert stats["finished"] == 2 and stats["requests"] == 3
    third = pytest.approx(1 / 3, abs=1e-4)
    assert stats["slo_attainment"] == {"200_30": third, "300_40": third, "500_50": third}
    assert stats["tpot_ms_p50_p90_p99"][0] == pytest.approx(35.0)


def test_launch_trace_wraps_the_engine_and_restores_it() -> None:
    spec = importlib.util.spec_from_file_location("launch_trace", _PATH.parent / "launch_trace.py")
    trace_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trace_module)
    engine = SemiPDEngine(EngineConfig(mode="semi-pd", semipd=SemiPDConfig(controller="static"), **CONFIG))
    try:
        pm, runner = engine.partitions, engine.prefill_worker.runner
        with trace_module.LaunchTrace(engine) as trace:
            assert "begin_launch" in vars(pm) and "prepare" in vars(runner)
            records, _ = bench.drive(engine, bench.make_requests(TRACE, 50.0, 0.2, 512, seed=1), drain_s=30.0)
        assert all(r.finished for r in records)
        assert "begin_launch" not in vars(pm) and "end_launch" not in vars(pm) and "prepare" not in vars(runner)
        out = trace.results()
        assert set(out) == {"prefill_stretches_over_5ms", "stacks_in_long_stretches", "gc_runs", "gc_max_pause_ms",
                            "gc_gen2_runs"}
        assert all(s["ms"] > 5 for s in out["prefill_stretches_over_5ms"])
    finally:
        engine.stop()
