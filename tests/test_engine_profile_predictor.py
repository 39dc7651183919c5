"""`--predictor profile` on the real engine: a profile file, the built-in profile of an H100 with
Llama-3.1-8B, or the paper predictor (logged) when this GPU and model have none."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from semipd.engine import EngineConfig
from semipd.engine.semi_pd import config as config_module
from semipd.engine.semi_pd.config import SemiPDConfig, resolve_predictor, semipd_config_from_args
from semipd.engine.semi_pd.engine import SemiPDEngine
from semipd.perf import get_perf_model, profile_from_model, save_profile


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = get_perf_model("llama-3.1-8b-h100")
    profile = profile_from_model(
        model, name="h100-measured", sms=[16, 64, 132], tokens=[128, 2048, 8192], batch=[1, 64, 256],
        kv_tokens=[0, 131_072], splits=[(16, 116), (64, 68), (112, 20)],
        memory={"memory_bytes": 80 * 2**30, "weight_bytes": 16 * 10**9, "activation_reserve_bytes": 3 * 2**30,
                "kv_bytes_per_token": 131072},
        meta={"device": "NVIDIA H100 80GB HBM3", "model": "llama-3.1-8b"})
    path = tmp_path_factory.mktemp("profiles") / "h100.json"
    save_profile(profile, path)
    return path


def test_a_profile_file_becomes_the_predictor_spec(profile_file: Path) -> None:
    assert resolve_predictor("profile", str(profile_file), "tiny-llama", "cpu") == f"profile:{profile_file}"
    with pytest.raises(ValueError, match="not found"):
        resolve_predictor("profile", "/nowhere/profile.json", "tiny-llama", "cpu")
    with pytest.raises(ValueError, match="--profile goes with --predictor profile"):
        resolve_predictor("paper", str(profile_file), "tiny-llama", "cpu")
    assert resolve_predictor("heuristic", None, "tiny-llama", "cpu") == "heuristic"


def test_without_a_file_the_builtin_profile_of_this_gpu_and_model_or_paper(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="semipd.engine.semi_pd.config"):
        assert resolve_predictor("profile", None, "tiny-llama", "cpu") == "paper"
    assert "no performance profile for tiny-llama on no CUDA device" in caplog.text
    assert "paper predictor, fitted online" in caplog.text
    monkeypatch.setattr(config_module, "_gpu", lambda device: ("NVIDIA H100 80GB HBM3", 132))
    assert resolve_predictor("profile", None, "/models/Llama-3.1-8B-Instruct", None) == \
        "profile:llama-3.1-8b-h100-measured"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="semipd.engine.semi_pd.config"):
        assert resolve_predictor("profile", None, "qwen3-8b", None) == "paper"
    assert "NVIDIA H100 80GB HBM3 (132 SMs)" in caplog.text


def test_serve_flags_reach_the_config(profile_file: Path) -> None:
    from semipd.server.cli import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--model", "tiny-llama", "--device", "cpu", "--mode", "semi-pd", "--predictor", "profile",
                              "--profile", str(profile_file), "--max-prefill-percent", "80"])
    config = semipd_config_from_args(args)
    assert config.predictor == f"profile:{profile_file}" and config.max_prefill_percent == 80.0
    plain = semipd_config_from_args(parser.parse_args(["--model", "tiny-llama", "--mode", "semi-pd"]))
    assert plain.predictor == "paper"


def test_config_refuses_a_profile_predictor_without_a_profile() -> None:
    with pytest.raises(ValueError, match="predictor 'profile' needs a profile"):
        SemiPDConfig(predictor="profile")
    with pytest.raises(ValueError, match="unknown"):
        SemiPDConfig(predictor="oracle")


def test_the_engine_controller_forecasts_with_the_profile(profile_file: Path) -> None:
    semipd = SemiPDConfig(controller="slo", predictor=f"profile:{profile_file}", monitoring_interval=0.05)
    engine = SemiPDEngine(EngineConfig(model="tiny-llama", load_format="dummy", device="cpu", num_kv_blocks=64,
                                       max_num_batched_tokens=48, max_num_seqs=8, mode="semi-pd", semipd=semipd))
    try:
        status = engine.get_status()["controller"]
        assert status["predictor"] == {"name": "profile", "profile": "h100-measured",
                                       "perf_model": "ProfilePerfModel"}
        assert "prediction_accuracy" in status
    finally:
        engine.stop()
