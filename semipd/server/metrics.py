"""GET /metrics: the API process's metrics collector (requests as clients saw them) in Prometheus
text format (`semipd:` names), through `semipd.metrics.SemiPDPrometheusExporter`; the SM
reallocation counters come from the engine's status snapshot. Rendering runs in a worker thread
so a scrape never stalls the event loop."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from semipd.engine.core.interface import EngineClient
from semipd.metrics import SemiPDPrometheusExporter


def metrics_router(exporter: SemiPDPrometheusExporter, client: EngineClient) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics")
    async def metrics() -> Response:
        partitions = client.get_status().get("partitions")
        if partitions:
            exporter.sync_reallocations(int(partitions.get("num_reallocations", 0)),
                                        int(partitions.get("num_refused", 0)))
        return Response(await asyncio.to_thread(exporter.render), media_type=exporter.content_type)

    return router
