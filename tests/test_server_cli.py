"""`semipd serve` argument handling (the server itself is tested in test_server_real.py)."""

from __future__ import annotations

import argparse

import pytest

from semipd.cli import build_parser
from semipd.server.cli import engine_kwargs, run, server_limits
from semipd.server.limits import ServerLimits


def parse(*argv: str) -> argparse.Namespace:
    argv = ("serve", *argv)
    return build_parser(list(argv)).parse_args(list(argv))


def test_defaults_bind_localhost_and_leave_engine_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEMIPD_API_KEY", raising=False)
    args = parse("--model", "tiny-llama")
    assert (args.host, args.port, args.max_waiting, args.api_key) == ("127.0.0.1", 8000, 1024, None)
    assert engine_kwargs(args) == {"model": "tiny-llama"}


def test_limit_options() -> None:
    args = parse("--model", "m")
    assert server_limits(args) == ServerLimits()
    assert args.allowed_origins == [] and args.request_header_timeout_s == 30.0
    args = parse("--model", "m", "--max-body-bytes", "5000", "--max-chat-messages", "8", "--request-body-timeout-s",
                 "2.5", "--request-header-timeout-s", "4", "--allowed-origins", "https://a.example, https://b.example")
    assert server_limits(args) == ServerLimits(max_body_bytes=5000, max_chat_messages=8, body_timeout_s=2.5)
    assert args.allowed_origins == ["https://a.example", "https://b.example"] and args.request_header_timeout_s == 4


def test_engine_options_pass_through() -> None:
    args = parse("--model", "m", "--load-format", "dummy", "--device", "cpu", "--dtype", "float32", "--mode",
                 "unified", "--max-model-len", "512", "--gpu-memory-utilization", "0.5", "--max-num-seqs", "8",
                 "--max-num-batched-tokens", "1024", "--block-size", "32", "--num-kv-blocks", "100", "--seed", "3")
    assert engine_kwargs(args) == {
        "model": "m", "load_format": "dummy", "device": "cpu", "dtype": "float32", "mode": "unified",
        "max_model_len": 512, "gpu_memory_utilization": 0.5, "max_num_seqs": 8, "max_num_batched_tokens": 1024,
        "block_size": 32, "num_kv_blocks": 100, "seed": 3}


def test_api_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMIPD_API_KEY", "from-env")
    assert parse("--model", "m").api_key == "from-env"
    assert parse("--model", "m", "--api-key", "flag").api_key == "flag"


@pytest.mark.parametrize("argv", [
    ("--model", "m", "--port", "70000"), ("--model", "m", "--max-num-seqs", "0"),
    ("--model", "m", "--gpu-memory-utilization", "1.5"), ("--model", "m", "--mode", "fast"),
    ("--model", "m", "--max-waiting", "-1"), ("--port", "80",), ("--model", "m", "--max-body-bytes", "0"),
    ("--model", "m", "--request-body-timeout-s", "0"), ("--model", "m", "--allowed-origins", " , "),
])
def test_invalid_arguments_exit(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


@pytest.mark.parametrize("argv, message", [
    (("--model", "tiny-llama", "--load-format", "dummy", "--device", "tpu"), "device"),
    (("--model", "no-such-model-dir", "--device", "cpu"), "no-such-model-dir"),
    (("--model", "tiny-llama", "--api-key", ""), "api-key"),
])
def test_bad_configuration_is_reported(argv: tuple[str, ...], message: str, capsys: pytest.CaptureFixture) -> None:
    assert run(parse(*argv)) == 2
    assert message in capsys.readouterr().err
