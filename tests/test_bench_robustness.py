"""`semipd bench` when things go wrong: every request failing, failing fast, Ctrl-C, and a server
whose vocabulary and context the requests must fit (a fake server that refuses as ours does)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_bench_e2e import FakeServer

from semipd.bench.datasets import DEFAULT_TOKEN_RANGE, BenchRequest
from semipd.bench.limits import check_random_lengths, fit_to_context, token_range_for
from semipd.cli import main

ROOT = Path(__file__).resolve().parents[1]
OURS = {"mode": "unified", "max_num_seqs": 256, "max_num_batched_tokens": 8192, "max_model_len": 256,
        "kv_cache": {"num_blocks": 512, "block_size": 16}}


@pytest.fixture
def failing() -> Iterator[FakeServer]:
    srv = FakeServer(fail_every=1).start()
    yield srv
    srv.stop()


def _bench(url: str, *extra: str) -> list[str]:
    return ["bench", "--base-url", url, "--random-input-len", "8", "--random-output-len", "2", "--no-progress",
            *extra]


def test_every_request_failing_exits_non_zero(failing: FakeServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_bench(failing.url, "--num-prompts", "5", "--request-rate", "100")) == 1
    captured = capsys.readouterr()
    assert "every request failed" in captured.err and "5 x HTTP 500: injected failure" in captured.out


def test_fail_fast_stops_after_the_first_identical_failures(failing: FakeServer, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    # 200 requests at 20 req/s would take 10 s; the first 10 all fail alike, so the run stops there.
    start = time.monotonic()
    assert main(_bench(failing.url, "--num-prompts", "200", "--request-rate", "20", "--output-json", str(out))) == 1
    assert time.monotonic() - start < 5.0
    err = capsys.readouterr().err
    assert "stopped early: the first 10 requests all failed: HTTP 500: injected failure" in err
    doc = json.loads(out.read_text())
    assert 10 <= len(doc["requests"]) < 30 and doc["stopped"].startswith("the first 10 requests")
    # --fail-fast 0 sends everything.
    assert main(_bench(failing.url, "--num-prompts", "30", "--request-rate", "300", "--fail-fast", "0",
                       "--output-json", str(out))) == 1
    assert len(json.loads(out.read_text())["requests"]) == 30


def test_fail_fast_ends_a_sweep(failing: FakeServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s.json"
    argv = ["bench", "sweep", "--base-url", failing.url, "--request-rates", "50,100", "--num-prompts", "40",
            "--random-input-len", "8", "--random-output-len", "2", "--goodput", "ttft:100", "--no-plot",
            "--no-progress", "--output-json", str(out)]
    assert main(argv) == 1
    doc = json.loads(out.read_text())
    assert [p["request_rate"] for p in doc["points"]] == [50.0]  # the higher rate is not tried
    assert doc["points"][0]["errors"] == {"HTTP 500: injected failure": len(doc["points"][0]["requests"])}
    assert "stopped early" in capsys.readouterr().err


def test_ctrl_c_keeps_the_finished_requests(tmp_path: Path) -> None:
    srv = FakeServer().start()
    out = tmp_path / "partial.json"
    cmd = [sys.executable, "-m", "semipd.cli", *_bench(srv.url, "--num-prompts", "200", "--request-rate", "10",
                                                       "--output-json", str(out))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while len(srv.payloads) < 15 and time.monotonic() < deadline:  # the run is under way
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        srv.stop()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted (Ctrl-C)" in stderr
    assert "Serving Benchmark Result" in stdout
    doc = json.loads(out.read_text())
    assert doc["stopped"] == "interrupted (Ctrl-C)" and 5 <= len(doc["requests"]) < 200
    assert all(r["success"] for r in doc["requests"])


def test_requests_fit_our_servers_vocabulary_and_context(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = FakeServer(status=OURS, vocab_size=512, max_model_len=256).start()
    try:
        out = tmp_path / "r.json"
        # The default token ids (1000:30000) lie outside the 512-token vocabulary: every request would fail.
        assert main(_bench(srv.url, "--num-prompts", "12", "--request-rate", "100", "--output-json", str(out))) == 0
        text = capsys.readouterr().out
        assert "token ids 0:512 (the default 1000:30000 lies outside the server's 512-token vocabulary)" in text
        doc = json.loads(out.read_text())
        assert doc["failed"] == 0 and doc["random_token_range"] == "0:512"
        assert doc["server"] == {"max_model_len": 256, "vocab_size": 512, "ours": True}
        assert doc["server_status"] == OURS
        # A trace's long prompts are shortened to fit the context with their outputs.
        trace = tmp_path / "trace.csv"
        trace.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
            f"2023-11-16 18:15:{i:02d}.000000,{100 + 100 * i},{20}\n" for i in range(6)))
        assert main(["bench", "--base-url", srv.url, "--dataset-name", "trace", "--trace-path", str(trace),
                     "--num-prompts", "6", "--request-rate", "100", "--no-progress"]) == 0
        assert "4 of 6 prompts shortened to fit the server's max_model_len of 256" in capsys.readouterr().out
        assert max(len(p["prompt"]) + p["max_tokens"] for p in srv.payloads[-6:]) <= 256
        # What cannot fit is refused before any load is sent (a one-token probe asks about the vocabulary).
        def streamed() -> int:
            return sum(bool(p.get("stream")) for p in srv.payloads)

        sent = streamed()
        assert main(_bench(srv.url, "--random-token-range", "1000:2000")) == 2
        assert "lies outside the server's vocabulary (512 tokens)" in capsys.readouterr().err
        assert main(["bench", "--base-url", srv.url, "--random-input-len", "300", "--random-output-len", "2"]) == 2
        assert "exceed the server's max_model_len of 256" in capsys.readouterr().err
        assert streamed() == sent
    finally:
        srv.stop()


def test_limits() -> None:
    assert token_range_for(None, None) == (DEFAULT_TOKEN_RANGE, "")
    assert token_range_for(None, 512) == ((0, 512), "token ids 0:512 (the default 1000:30000 lies outside the "
                                                    "server's 512-token vocabulary)")
    assert token_range_for((10, 900), 512)[0] == (10, 512)
    assert token_range_for((10, 100), 512) == ((10, 100), "")
    with pytest.raises(ValueError, match="e.g. --random-token-range 0:512"):
        token_range_for((600, 700), 512)
    check_random_lengths(100, 28, 0.0, 128)
    with pytest.raises(ValueError, match="up to 150 tokens plus outputs of up to 30"):
        check_random_lengths(100, 20, 0.5, 128)
    reqs = [BenchRequest((1,) * 10, 10, 5), BenchRequest("a b c d e f g h", 8, 30), BenchRequest((2,) * 3, 3, 3)]
    fitted, changed = fit_to_context(reqs, 12)
    assert changed == 2
    assert (len(fitted[0].prompt), fitted[0].input_len, fitted[0].output_len) == (7, 7, 5)
    assert (fitted[1].prompt, fitted[1].input_len, fitted[1].output_len) == ("a", 1, 11)
    assert fitted[2] is reqs[2]
    assert fit_to_context(reqs, None) == (reqs, 0)


@pytest.mark.parametrize("mode, flag", [("run", "--output-json"), ("sweep", "--output-json"), ("sweep", "--plot")])
def test_an_unwritable_output_path_is_refused_before_any_request(mode: str, flag: str, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-dir" / "out.json"
    argv = ["bench", mode, "--base-url", "http://127.0.0.1:9", "--dataset-name", "random", "--num-prompts", "1",
            flag, str(missing)]
    if mode == "sweep":
        argv += ["--request-rates", "1", "--goodput", "ttft:100"]
    start = time.monotonic()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and "does not exist" in err and time.monotonic() - start < 5


def test_connection_errors_of_torn_down_requests_print_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio

    import aiohttp

    from semipd.bench.runner import _quiet_teardown

    loop = asyncio.new_event_loop()
    try:
        _quiet_teardown(loop, {"message": "unhandled exception during asyncio.run() shutdown",
                               "exception": aiohttp.ClientConnectionResetError("Cannot write to closing transport")})
        assert not caplog.records  # asyncio's handler logs the traceback; this one is expected and silent
        _quiet_teardown(loop, {"message": "something else", "exception": RuntimeError("boom")})
        assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
    finally:
        loop.close()
