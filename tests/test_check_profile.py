"""benchmarks/check_profile.py on CPU with the tiny preset: a quick profile, then the held-back check
against it (the check itself is meant for a GPU; here only the path and the shapes are tested)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from semipd.cli import main as semipd_main

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "check_profile.py"
_spec = importlib.util.spec_from_file_location("check_profile", _PATH)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

TINY = ["--model", "tiny-llama", "--load-format", "dummy", "--device", "cpu", "--quick"]


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("profile") / "p.json"
    assert semipd_main(["profile", *TINY, "--output", str(path)]) == 0
    return path


def test_check_measures_held_back_shapes(profile_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "check.json"
    assert check.main(["--profile", str(profile_path), *TINY, "--output", str(out)]) == 0
    assert "within 10%" in capsys.readouterr().out
    report = json.loads(out.read_text())
    profile = json.loads(profile_path.read_text())
    assert report["profile"]["name"] == profile["name"] and report["machine"]["torch"]
    rows = report["rows"]
    assert {r["kind"] for r in rows} == {"prefill", "decode"}
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in rows)
    for r in rows:
        if r["kind"] == "prefill":
            assert r["tokens"] not in profile["prefill"]["tokens"]
        else:
            assert r["batch"] not in profile["decode"]["batch"]
            assert r["context"] not in profile["meta"]["decode_contexts"]


@pytest.mark.parametrize(("extra", "message"), [(["--model", "llama-3.1-8b"], "not of llama-3.1-8b"),
                                                (["--prefill-tokens", "16"], "off the profile's grid"),
                                                (["--sms", "7"], "--sms")])
def test_bad_arguments_exit_2(profile_path: Path, capsys: pytest.CaptureFixture, extra: list[str],
                              message: str) -> None:
    assert check.main(["--profile", str(profile_path), *TINY, *extra]) == 2
    assert message in capsys.readouterr().err


def test_missing_profile_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert check.main(["--profile", str(tmp_path / "none.json"), *TINY]) == 2
    assert "not found" in capsys.readouterr().err


def test_midpoints_fall_strictly_between() -> None:
    assert check.midpoints([128, 512, 2048, 8192]) == [256, 1024, 4096]
    assert check.midpoints([1, 16, 64, 128, 256]) == [4, 32, 91, 181]
    assert check.midpoints([1, 2]) == []
    assert check.spread([16, 32, 48, 64, 80, 96, 112, 116]) == [32, 80, 112]
