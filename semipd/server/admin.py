"""Operational endpoints: /health, /semipd/status and manual SM allocation.

All of them read the status snapshot the engine publishes (at most a fraction of a second old)
and never wait for the engine. ``POST /semipd/allocation`` with ``{"prefill_percentage": P,
"decode_percentage": D}`` applies a split by hand (the engine's controller then stays static)
and answers with the split applied: the prefill share snaps to the nearest pre-created
partition (a multiple of the GPU's SM granularity), and ``snapped`` says whether it moved. 400
when the split is invalid or the engine has no SM partitions (unified mode).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.encoders import jsonable_encoder
from pydantic import Field

from semipd.allocation import SMAllocation
from semipd.engine.core.interface import EngineUnavailableError, NoPartitionsError
from semipd.server.errors import APIError, bad_request
from semipd.server.openai_api import server_state
from semipd.server.protocol import Number, StrictBody
from semipd.server.request_body import openapi_body, parse_body

router = APIRouter()


class AllocationRequest(StrictBody):
    prefill_percentage: Annotated[Number, Field(gt=0, le=100)]
    decode_percentage: Annotated[Number, Field(gt=0, le=100)]


def jsonable(value: Any) -> Any:
    """`value` (an engine status dict) made JSON-safe: dataclasses, enums, numpy scalars and arrays."""
    return jsonable_encoder(value, custom_encoder={np.generic: lambda x: x.item(), np.ndarray: lambda x: x.tolist()})


@router.get("/health")
async def health(request: Request) -> dict[str, str]:
    """200 while the engine runs, else 503."""
    if not server_state(request).client.is_running:
        raise APIError(503, "the engine is not running", code="engine_not_running")
    return {"status": "ok"}


@router.get("/semipd/status")
async def status(request: Request) -> Any:
    return jsonable(server_state(request).client.get_status())


@router.post("/semipd/allocation", openapi_extra=openapi_body(AllocationRequest))
async def set_allocation(request: Request) -> Any:
    body = await parse_body(request, AllocationRequest)
    client = server_state(request).client
    try:
        requested = SMAllocation(float(body.prefill_percentage), float(body.decode_percentage))
        applied = await client.set_sm_allocation(requested)
    except NoPartitionsError as exc:
        raise bad_request(str(exc), code="no_partitions") from None
    except EngineUnavailableError as exc:
        raise APIError(503, str(exc), code="engine_unavailable") from None
    except ValueError as exc:
        raise bad_request(str(exc), param="prefill_percentage") from None
    snapped = abs(applied.prefill_percentage - requested.prefill_percentage) > 1e-9
    return jsonable({"allocation": applied.as_dict(), "requested": requested.as_dict(), "snapped": snapped,
                     "status": client.get_status()})
