"""`semipd serve`: the OpenAI-compatible API in this process, the engine in an engine-core process.

Example: ``semipd serve --model tiny-llama --load-format dummy --device cpu --port 8000``.
Engine options are passed through to `semipd.engine.EngineConfig`; those not given keep the
engine's defaults. The API key may also come from the ``SEMIPD_API_KEY`` environment variable
(it then does not show in the process list).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from typing import Any

from semipd.engine.semi_pd.config import add_semipd_arguments, semipd_config_from_args
from semipd.server.http_protocol import DEFAULT_HEAD_TIMEOUT_S, uvicorn_options
from semipd.server.limits import (
    BODY_ALLOWANCE_BYTES,
    BODY_BYTES_PER_TOKEN,
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_CHAT_MESSAGES,
    ServerLimits,
)

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
CORE_DEATH_GRACE_S = 1.0
"""Seconds the server keeps answering (503) after the engine core died, before it exits."""
# CLI option -> EngineConfig field (passed only when given).
ENGINE_OPTIONS = ("model", "load_format", "dtype", "device", "mode", "gpu_memory_utilization", "block_size",
                  "num_kv_blocks", "max_num_batched_tokens", "max_num_seqs", "max_model_len", "tokenizer", "seed",
                  "async_scheduling")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number in 0..65535, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _origins(text: str) -> list[str]:
    origins = [origin.strip() for origin in text.split(",") if origin.strip()]
    if not origins:
        raise argparse.ArgumentTypeError("give at least one origin (or '*')")
    return origins


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and engine")
    model.add_argument("--model", required=True, help="Hugging Face model directory or preset name (e.g. tiny-llama)")
    model.add_argument("--served-model-name", help="name clients use for the model (default: --model)")
    model.add_argument("--load-format", choices=["auto", "safetensors", "dummy"],
                       help="weights from the directory, or random weights (dummy)")
    model.add_argument("--tokenizer", help="directory with tokenizer.json (default: the model directory)")
    model.add_argument("--device", help="cpu, cuda, cuda:N or auto (CUDA when available)")
    model.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
    model.add_argument("--mode", choices=["unified", "semi-pd"],
                       help="unified: one batch on the whole GPU; semi-pd: prefill and decode on SM partitions")
    model.add_argument("--max-model-len", type=_positive_int, help="longest prompt + output, in tokens")
    model.add_argument("--gpu-memory-utilization", type=_fraction, help="share of GPU memory the engine may use")
    model.add_argument("--max-num-seqs", type=_positive_int, help="most requests running at once")
    model.add_argument("--max-num-batched-tokens", type=_positive_int, help="token budget of one iteration")
    model.add_argument("--block-size", type=_positive_int, help="tokens per KV block")
    model.add_argument("--num-kv-blocks", type=_positive_int, help="KV blocks to allocate (default: sized from memory)")
    model.add_argument("--seed", type=int, help="seed for dummy weights and unseeded requests")
    model.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false", default=None,
                       help="one step at a time (default: launch the next step before reading the last one's tokens)")
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    server.add_argument("--port", type=_port, default=8000)
    server.add_argument("--max-waiting", type=_positive_int, default=1024,
                        help="requests that may wait for the engine; past it, 503 with Retry-After")
    server.add_argument("--api-key", default=os.environ.get("SEMIPD_API_KEY"),
                        help="require 'Authorization: Bearer KEY' on every route but /health "
                             "(default: $SEMIPD_API_KEY)")
    server.add_argument("--allowed-origins", type=_origins, default=[],
                        help="comma-separated origins browsers may call the API from (CORS; '*': any)")
    server.add_argument("--log-level", choices=LOG_LEVELS, default="info")
    limits = parser.add_argument_group("request limits (docs/HARDENING.md)")
    limits.add_argument("--max-body-bytes", type=_positive_int,
                        help=f"largest request body, else 413 (default: {BODY_BYTES_PER_TOKEN} bytes per token of "
                             f"--max-model-len + {BODY_ALLOWANCE_BYTES >> 20} MiB)")
    limits.add_argument("--max-chat-messages", type=_positive_int, default=DEFAULT_MAX_CHAT_MESSAGES,
                        help="most messages in one chat request, else 400 (default %(default)s)")
    limits.add_argument("--request-body-timeout-s", type=_positive_float, default=DEFAULT_BODY_TIMEOUT_S,
                        help="seconds to receive a whole request body, else 408 (default %(default)s)")
    limits.add_argument("--request-header-timeout-s", type=_positive_float, default=DEFAULT_HEAD_TIMEOUT_S,
                        help="seconds to receive a request line and headers, else 408 and the connection "
                             "closes (default %(default)s)")
    add_semipd_arguments(parser)


def engine_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The EngineConfig fields the user gave."""
    return {name: getattr(args, name) for name in ENGINE_OPTIONS if getattr(args, name, None) is not None}


def server_limits(args: argparse.Namespace) -> ServerLimits:
    """The request limits the user gave."""
    return ServerLimits(max_body_bytes=args.max_body_bytes, max_chat_messages=args.max_chat_messages,
                        body_timeout_s=args.request_body_timeout_s)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C or SIGTERM (exit 0), or until the engine core dies (exit 1)."""
    import uvicorn

    from semipd.engine.core.client import EngineCoreClient
    from semipd.engine.engine_config import EngineConfig
    from semipd.engine.models.config import resolve_model_config
    from semipd.engine.tokenizer import tokenizer_dir
    from semipd.server.app import create_app

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.api_key == "":
        print("semipd serve: --api-key must not be empty", file=sys.stderr)
        return 2
    try:
        semipd = semipd_config_from_args(args) if args.mode == "semi-pd" else None
        config = EngineConfig(**engine_kwargs(args), semipd=semipd)
        resolve_model_config(config.model)  # a wrong model or tokenizer fails here, before the core starts
        tokenizer_dir(config.model, config.tokenizer)
        client = EngineCoreClient(config, max_waiting=args.max_waiting, log_level=args.log_level)
    except (ValueError, FileNotFoundError) as exc:
        print(f"semipd serve: {exc}", file=sys.stderr)
        return 2
    app = create_app(client, args.served_model_name or args.model, api_key=args.api_key,
                     limits=server_limits(args), allowed_origins=args.allowed_origins)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                                           timeout_graceful_shutdown=5,
                                           **uvicorn_options(head_timeout_s=args.request_header_timeout_s)))

    def exit_soon() -> None:  # let the failed requests' errors reach their clients, then stop serving
        asyncio.get_running_loop().call_later(CORE_DEATH_GRACE_S, setattr, server, "should_exit", True)

    client.on_core_death(exit_soon)
    try:
        server.run()  # on SIGTERM uvicorn shuts down (engine core included), then re-raises the signal
    except KeyboardInterrupt:  # Ctrl-C: the same, re-raised as KeyboardInterrupt after the shutdown
        return 130
    if client.died:
        print(f"semipd serve: the engine core exited (exit code {client.exit_code})", file=sys.stderr)
        return 1
    if not server.started:
        return 1  # start-up failed (the engine core could not load): uvicorn logged why
    return 0
