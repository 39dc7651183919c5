"""`semipd profile` on the CPU with the tiny preset: one "partition" (the whole device), a valid
profile the simulator and the profile predictor read, a short table and the run's meta."""

from __future__ import annotations

import json

import pytest

from semipd.cli import main
from semipd.engine.profiling.profiler import ProfileGrid
from semipd.perf import ProfilePerfModel, load_profile
from semipd.slo import create_predictor


def test_profile_on_cpu_writes_a_valid_profile(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    assert main(["profile", "--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--quick",
                 "--num-kv-blocks", "64", "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "prefill 16" in text and "side by side P100/D100" in text and f"wrote {out}" in text
    doc = json.loads(out.read_text())
    assert doc["format"] == "semipd-profile/1" and doc["total_sms"] == 100
    assert doc["prefill"]["sms"] == doc["decode"]["sms"] == [100]  # one partition: the whole device
    assert doc["interference"]["splits"] == [[100, 100]]
    assert all(v >= 1.0 for v in doc["interference"]["prefill_slowdown"] + doc["interference"]["decode_slowdown"])
    host = doc["host_overhead_ms"]
    assert set(host) == {"prefill", "decode"} and all(v >= 0 for v in host.values())
    meta = doc["meta"]
    assert meta["device"] == "cpu" and meta["torch"] and meta["date"] and meta["model"] == "tiny-llama"
    assert meta["backend"] == "none" and meta["sm_limited"] is False
    perf = load_profile(out)
    assert isinstance(perf, ProfilePerfModel)
    assert perf.prefill_time([(64, 64)], 100) > perf.prefill_time([(16, 16)], 100) * 0.5 > 0
    assert perf.decode_time(4, 128, 50) > 0  # one SM count measured: the same at every count
    assert perf.kv_capacity_tokens(0.9) == 64 * 16  # the engine's pool
    assert create_predictor(f"profile:{out}").describe()["profile"] == "tiny-llama-cpu"


def test_profile_refuses_what_it_cannot_measure(tmp_path, capsys):
    assert main(["profile", "--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu",
                 "--prefill-tokens", "4096", "--decode-batch", "1", "--decode-context", "8,16", "--reps", "1",
                 "--num-kv-blocks", "64", "--output", str(tmp_path / "x.json")]) == 2
    assert "max_model_len" in capsys.readouterr().err
    assert main(["profile", "--model", "tiny-llama", "--device", "cpu", "--decode-context", "8",
                 "--output", str(tmp_path / "x.json")]) == 2
    assert "decode_context" in capsys.readouterr().err


@pytest.mark.parametrize(("kwargs", "field"), [({"prefill_tokens": (512, 128)}, "prefill_tokens"),
                                                ({"decode_batch": ()}, "decode_batch"),
                                                ({"decode_context": (64, 64)}, "decode_context"),
                                                ({"reps": 0}, "reps"),
                                                ({"interference_seconds": 0.0}, "interference_seconds"),
                                                ({"sms": (0,)}, "sms")])
def test_grid_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ProfileGrid(**kwargs)
