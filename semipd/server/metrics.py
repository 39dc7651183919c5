"""GET /metrics: the engine's metrics collector in Prometheus text format (`semipd:` names),
through `semipd.metrics.SemiPDPrometheusExporter`. Rendering runs in a worker thread so a
scrape never stalls the event loop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from semipd.metrics import SemiPDPrometheusExporter


def metrics_router(exporter: SemiPDPrometheusExporter) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def metrics() -> Response:
        return Response(await asyncio.to_thread(exporter.render), media_type=exporter.content_type)

    return router
