"""The FastAPI application around an engine client: `create_app`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

import semipd
from semipd.engine.core.in_process import InProcessClient
from semipd.engine.core.interface import EngineClient
from semipd.metrics import SemiPDPrometheusExporter
from semipd.server import admin, openai_api
from semipd.server.auth import APIKeyMiddleware
from semipd.server.body_limit import BodyLimitMiddleware
from semipd.server.errors import install_error_handlers
from semipd.server.limits import ServerLimits
from semipd.server.metrics import metrics_router
from semipd.server.openai_api import ServerState


def create_app(engine: EngineClient | Any, served_model_name: str, api_key: str | None = None,
               limits: ServerLimits | None = None, allowed_origins: Sequence[str] = ()) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under the model name `served_model_name`.

    `engine` is an `EngineClient` (`semipd serve` passes an `EngineCoreClient`: the engine in its
    own process), or an `AsyncEngine`-like object run in this process (`InProcessClient`). The app
    starts the engine when it starts up and stops it when it shuts down. With `api_key`, every
    route except /health needs ``Authorization: Bearer <api_key>``. `limits` bounds requests
    (default `ServerLimits()`); `allowed_origins` turns on CORS for those origins (``*``: any).
    """
    if not served_model_name:
        raise ValueError("served_model_name must be a non-empty string")
    limits = limits or ServerLimits()
    client = engine if isinstance(engine, EngineClient) else InProcessClient(engine)
    exporter = SemiPDPrometheusExporter(client.metrics_collector)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await client.start()
        try:
            yield
        finally:
            await client.stop()
            exporter.close()

    app = FastAPI(title="semipd", version=semipd.__version__, lifespan=lifespan,
                  description="OpenAI-compatible server over the Semi-PD engine.")
    app.state.semipd = ServerState(client=client, served_model_name=served_model_name, created=int(time.time()),
                                   limits=limits)
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    app.include_router(metrics_router(exporter, client))
    # The last middleware added runs first: CORS, then the API key, then the body limits.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=lambda: limits.body_bytes(client.max_model_len),
                       body_timeout_s=limits.body_timeout_s)
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    if allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(allowed_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["Retry-After"],
                           max_age=600)
    return app
