"""Replaying a `semipd bench` result on the simulated GPU, and the error table it reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from semipd.cli import main
from semipd.sim.engine_costs import EngineCosts, get_costs
from semipd.sim.engine_settings import EngineSettings, settings_from_status
from semipd.sim.fidelity import Cell, RunStats, compare, slo_attainment, stats_from_samples
from semipd.sim.replay import load_runs, replay
from semipd.sim.runner import SimConfig, run_policy
from semipd.workload import WorkloadRequest

ROOT = Path(__file__).resolve().parents[1]
SEMIPD_STATUS = {
    "mode": "semi-pd", "max_num_seqs": 128, "max_num_batched_tokens": 4096,
    "kv_cache": {"num_blocks": 4096, "block_size": 16},
    "allocation": {"prefill_sms": 88, "decode_sms": 44, "prefill_percentage": 66.67, "decode_percentage": 33.33},
    "partitions": {"sm_grid": {"total_sms": 132, "granularity": 8, "min_sms": 16},
                   "reachable_prefill_sms": [32, 48, 64, 80, 88, 96, 104]},
    "controller": {"mode": "static", "predictor": {"name": "paper"}, "monitoring_interval": 2.0,
                   "cooldown_seconds": 4.0, "slo_constraints": {"ttft_target_ms": 300.0, "tpot_target_ms": 40.0}},
    "cuda_graphs": {"partitions": 7, "graphs": 77},
}


def _bench_result(workload: list[WorkloadRequest], status: dict | None, config: SimConfig, policy: str,
                  sweep: bool = False) -> dict:
    """A `semipd bench` result whose requests are what `policy` gave on the simulator under `config`."""
    sim = run_policy(workload, policy, config, collect_itl=True)
    records = []
    for i, r in enumerate(sim.requests):
        records.append({"index": i, "scheduled_time": r.arrival, "send_time": r.arrival, "input_tokens": r.input_len,
                        "requested_output_tokens": r.output_len, "output_tokens": r.output_len,
                        "ttft": r.ttft_ms / 1e3, "itls": [], "latency": r.completion - r.arrival,
                        "usage_reported": True, "error": "", "success": True,
                        "tpot": None if r.tpot_ms is None else r.tpot_ms / 1e3})
    records.append({"index": len(records), "scheduled_time": 1.0, "send_time": 1.0, "input_tokens": 5,
                    "requested_output_tokens": 5, "output_tokens": 0, "ttft": None, "itls": [], "latency": 0.01,
                    "usage_reported": False, "error": "HTTP 500: boom", "success": False, "tpot": None})
    if sweep:
        return {"goodput": ["ttft:300", "tpot:40"], "server_status": status,
                "points": [{"request_rate": 4.0, "requests": records, "server_status": status}]}
    return {"goodput_slos_ms": {"ttft": 300.0, "tpot": 40.0}, "requests": records, "server_status": status}


WORKLOAD = [WorkloadRequest(0.013 * i ** 1.5, 50 + 37 * i % 900, 2 + 13 * i % 150) for i in range(40)]


@pytest.mark.parametrize("status, policy", [(None, "unified"), (SEMIPD_STATUS, "static:66.67/33.33")])
def test_replay_round_trips_and_reproduces_its_own_simulation(tmp_path: Path, status: dict | None,
                                                              policy: str) -> None:
    costs = get_costs("http")
    settings = settings_from_status(status)
    config = settings.sim_config(costs, slo=SimConfig().slo)
    path = tmp_path / "result.json"
    path.write_text(json.dumps(_bench_result(WORKLOAD, status, config, policy, sweep=status is not None)))
    (run,) = load_runs(path)
    assert run.num_failed == 1 and run.slos_ms == {"ttft": 300.0, "tpot": 40.0}
    res = replay(run, EngineSettings(), costs, slo=SimConfig().slo)
    assert res.policy == policy
    # The simulator got exactly the measured requests: arrivals and lengths.
    assert [(r.arrival, r.input_len, r.output_len) for r in res.simulation.requests] == \
        [(w.arrival_time, w.input_len, w.output_len) for w in WORKLOAD]
    # Measured here means simulated under the same settings: every error is zero.
    assert all(c.error_pct == pytest.approx(0.0, abs=1e-9) for c in res.table.cells)
    assert res.table.attainment_points == pytest.approx(0.0)
    assert {c.metric for c in res.table.cells} == {"ttft", "tpot", "e2e", "request_throughput", "output_throughput"}


def test_settings_from_an_engine_status() -> None:
    s = settings_from_status(SEMIPD_STATUS)
    assert s.policy() == "static:66.67/33.33" and s.decode_borrow is False  # 7 graph sets: no whole-device one
    assert s.min_prefill_percent == pytest.approx(100 * 32 / 132) and s.max_prefill_percent == pytest.approx(
        100 * 104 / 132)
    c = s.sim_config(EngineCosts())
    assert (c.max_prefill_tokens, c.max_decode_batch, c.num_kv_blocks, c.min_sms, c.cooldown_seconds) == (
        4096, 128, 4096, 16, 4.0)
    assert (c.slo.ttft_target_ms, c.slo.tpot_target_ms, c.monitoring_interval) == (300.0, 40.0, 2.0)
    slo = s.merged(EngineSettings(controller="slo", predictor="heuristic", max_num_seqs=64))
    assert slo.policy() == "slo:heuristic" and slo.sim_config(EngineCosts()).max_decode_batch == 64
    assert settings_from_status({"error": "not ours"}) == EngineSettings()
    assert settings_from_status(None).policy() == "unified"
    with pytest.raises(ValueError, match="no simulated counterpart"):
        s.merged(EngineSettings(controller="off")).policy()
    with pytest.raises(ValueError, match="mode"):
        EngineSettings(mode="disaggregated")
    committed = json.loads((ROOT / "benchmarks/results/semipd_h100.json").read_text())["check"]["semipd_status"]
    assert settings_from_status({"mode": "semi-pd", **committed}).decode_borrow is True  # 14 graph sets, 13 splits


def test_error_table_on_hand_made_numbers() -> None:
    measured = RunStats({"ttft": {50.0: 100.0, 90.0: 200.0}, "tpot": {50.0: 20.0, 90.0: 0.0}},
                        request_throughput=10.0, output_throughput=None, slo_attainment=0.8)
    simulated = RunStats({"ttft": {50.0: 90.0, 90.0: 260.0}, "tpot": {50.0: 21.0, 90.0: 5.0}, "itl": {50.0: 1.0}},
                         request_throughput=12.5, output_throughput=900.0, slo_attainment=0.75)
    table = compare(measured, simulated)
    errors = {(c.metric, c.stat): c.error_pct for c in table.cells}
    assert errors == {("ttft", "p50"): pytest.approx(-10.0), ("ttft", "p90"): pytest.approx(30.0),
                      ("tpot", "p50"): pytest.approx(5.0), ("tpot", "p90"): None,
                      ("request_throughput", "value"): pytest.approx(25.0)}
    assert table.mape("ttft") == pytest.approx(20.0) and table.mape("tpot") == pytest.approx(5.0)
    assert table.mape("itl") is None  # not measured: no cell
    assert table.within(10.0) == (2, 3)  # -10% and +5% are within 10%, +30% is not; the 0 ms cell has no error
    assert table.attainment_points == pytest.approx(-5.0)
    assert Cell("x", "p50", 4.0, 5.0).error_pct == pytest.approx(25.0)
    doc = table.to_dict()
    assert doc["mape_pct"]["ttft"] == pytest.approx(20.0)
    assert doc["slo_attainment"]["difference_points"] == pytest.approx(-5.0)


def test_stats_and_attainment_from_samples() -> None:
    stats = stats_from_samples({"ttft": [10.0, 20.0, 30.0, 40.0, 50.0], "tpot": []}, (50.0, 90.0))
    assert stats.latency_ms == {"ttft": {50.0: 30.0, 90.0: 46.0}}
    # ttft <= 25 and tpot <= 10: the first request meets both, the second has no TPOT (one token), one more failed.
    assert slo_attainment([20.0, 25.0, 30.0], [5.0, None, 5.0], [1.0, 1.0, 1.0], {"ttft": 25.0, "tpot": 10.0},
                          num_failed=1) == pytest.approx(2 / 4)
    assert slo_attainment([20.0], [5.0], [900.0], {"e2el": 800.0}) == 0.0
    assert slo_attainment([20.0], [5.0], [1.0], {}) is None
    with pytest.raises(ValueError, match="unknown"):
        slo_attainment([1.0], [1.0], [1.0], {"goodput": 1.0})


def test_replay_cli_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sweep.json"
    config = settings_from_status(SEMIPD_STATUS).sim_config(get_costs("http"), slo=SimConfig().slo)
    path.write_text(json.dumps(_bench_result(WORKLOAD, SEMIPD_STATUS, config, "static:66.67/33.33", sweep=True)))
    out = tmp_path / "replay.json"
    assert main(["simulate", "--replay", str(path), "--max-num-seqs", "64", "--frontend-offset-ms", "50",
                 "--output-json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rate 4: 40 requests replayed, 1 failed (not replayed)" in text and "TTFT (ms)" in text
    doc = json.loads(out.read_text())
    (run,) = doc["runs"]
    assert run["engine"]["max_num_seqs"] == 64 and run["costs"]["frontend_ms"] == 50.0
    ttft50 = next(c for c in run["fidelity"]["cells"] if c["metric"] == "ttft" and c["stat"] == "p50")
    assert ttft50["simulated"] > ttft50["measured"]  # 50 ms of front end instead of 20


def test_replay_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def error() -> str:
        return " ".join(capsys.readouterr().err.split())  # the console wraps long lines

    old = tmp_path / "old.json"
    old.write_text(json.dumps({"points": [{"request_rate": 2.0, "p50_ttft_ms": 10.0}]}))
    assert main(["simulate", "--replay", str(old)]) == 2
    assert "no per-request records" in error()
    assert main(["simulate", "--replay", str(tmp_path / "missing.json")]) == 2
    assert "cannot read" in error()
    assert main(["simulate", "--replay", str(old), "--policy", "unified"]) == 2
    assert "drop --policy" in error()
    assert main(["simulate", "--mode", "unified", "--duration", "5"]) == 2
    assert "go with --replay" in error()


@pytest.mark.parametrize(("status", "preset"), [(SEMIPD_STATUS, "http"),
                                                ({**SEMIPD_STATUS, "engine_core_pid": 4242}, "core")])
def test_a_replay_assumes_the_costs_of_the_server_that_was_measured(tmp_path: Path, status: dict,
                                                                    preset: str) -> None:
    """A result from a server with the engine-core process replays with the ``core`` costs; one from
    the one-process server of old (no core in its status) with ``http``."""
    path = tmp_path / "sweep.json"
    config = settings_from_status(SEMIPD_STATUS).sim_config(get_costs("http"), slo=SimConfig().slo)
    path.write_text(json.dumps(_bench_result(WORKLOAD, status, config, "static:66.67/33.33", sweep=True)))
    out = tmp_path / "replay.json"
    assert main(["simulate", "--replay", str(path), "--output-json", str(out)]) == 0
    assert json.loads(out.read_text())["costs"] == get_costs(preset).as_dict()
