"""The FastAPI application around an engine client: `create_app`."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

import semipd
from semipd.engine.core.in_process import InProcessClient
from semipd.engine.core.interface import EngineClient
from semipd.metrics import SemiPDPrometheusExporter
from semipd.server import admin, openai_api
from semipd.server.auth import APIKeyMiddleware
from semipd.server.errors import install_error_handlers
from semipd.server.metrics import metrics_router
from semipd.server.openai_api import ServerState


def create_app(engine: EngineClient | Any, served_model_name: str, api_key: str | None = None) -> FastAPI:
    """An OpenAI-compatible app serving `engine` under the model name `served_model_name`.

    `engine` is an `EngineClient` (`semipd serve` passes an `EngineCoreClient`: the engine in its
    own process), or an `AsyncEngine`-like object run in this process (`InProcessClient`). The app
    starts the engine when it starts up and stops it when it shuts down. With `api_key`, every
    route except /health needs ``Authorization: Bearer <api_key>``.
    """
    if not served_model_name:
        raise ValueError("served_model_name must be a non-empty string")
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
    app.state.semipd = ServerState(client=client, served_model_name=served_model_name, created=int(time.time()))
    install_error_handlers(app)
    app.include_router(openai_api.router)
    app.include_router(admin.router)
    app.include_router(metrics_router(exporter, client))
    if api_key is not None:
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    return app
