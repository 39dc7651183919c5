"""A real run replayed: `semipd bench` against the engine's OpenAI server on CPU (tiny preset,
dummy weights, in-process on a free port), then `semipd simulate --replay` of its result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_server_support import running  # noqa: E402

from semipd.cli import main  # noqa: E402
from semipd.engine import AsyncEngine, EngineConfig, create_engine  # noqa: E402
from semipd.server.app import create_app  # noqa: E402
from semipd.sim.engine_costs import get_costs  # noqa: E402
from semipd.sim.engine_settings import EngineSettings  # noqa: E402
from semipd.sim.replay import load_runs, replay  # noqa: E402


def test_a_cpu_server_run_replays(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    engine = create_engine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", max_model_len=256,
                                        num_kv_blocks=200, max_num_seqs=8))
    result = tmp_path / "cpu.json"
    with running(create_app(AsyncEngine(engine), "tiny-llama")) as server:
        assert main(["bench", "--base-url", server.url, "--num-prompts", "12", "--random-input-len", "24",
                     "--random-output-len", "6", "--random-range-ratio", "0.5", "--request-rate", "30",
                     "--goodput", "ttft:1000", "tpot:200", "--output-json", str(result), "--no-progress"]) == 0
    doc = json.loads(result.read_text())
    assert doc["failed"] == 0 and doc["server"]["ours"] and doc["server_status"]["max_num_seqs"] == 8
    capsys.readouterr()

    out = tmp_path / "replay.json"
    assert main(["simulate", "--replay", str(result), "--output-json", str(out)]) == 0
    assert "run: 12 requests replayed" in capsys.readouterr().out
    (rep,) = json.loads(out.read_text())["runs"]
    assert rep["policy"] == "unified" and rep["num_replayed"] == 12
    assert (rep["engine"]["num_kv_blocks"], rep["engine"]["max_num_seqs"]) == (200, 8)
    assert {c["metric"] for c in rep["fidelity"]["cells"]} >= {"ttft", "tpot", "itl", "e2e"}
    assert rep["fidelity"]["slo_attainment"]["measured"] is not None

    # The simulator ran exactly the requests the server served: send offsets and lengths.
    (run,) = load_runs(result)
    res = replay(run, EngineSettings(), get_costs("http"))
    measured = sorted((r["send_time"], r["input_tokens"], r["output_tokens"]) for r in doc["requests"])
    assert [(r.arrival, r.input_len, r.output_len) for r in res.simulation.requests] == measured
