"""One API request's life in the engine: submit, read outputs, abort when left unfinished.

`Generation` wraps the engine's output stream so that every way out of a request (normal end,
client disconnect, cancelled task, error) leaves the engine clean: a request the client no
longer waits for is aborted, which frees its KV blocks. `GenerationStream` is the SSE response
that guarantees this even if the client leaves before the body is ever iterated.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import msgspec
from fastapi import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from semipd.engine.core.interface import EngineClient, EngineUnavailableError, QueueFullError, RequestFailedError
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.server.errors import APIError, bad_request

T = TypeVar("T")

class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class Generation:
    """The engine outputs of one request; `aclose()` aborts it unless it finished."""

    def __init__(self, client: EngineClient, rid: str, prompt_token_ids: list[int], params: SamplingParams,
                 arrival_time: float | None = None) -> None:
        self.client = client
        self.rid = rid
        self.finished = False
        self._outputs = client.generate(rid, prompt_token_ids, params, arrival_time)

    async def next(self) -> RequestOutput:
        """The next output. Raises APIError: 503 when the queue is full or the engine is not running (with
        Retry-After), 400 when the engine refuses the request, 500 when the engine failed or aborted it or
        ended the stream without a finished output."""
        try:
            out = await anext(self._outputs)
        except StopAsyncIteration:
            self.finished = True
            raise APIError(500, "the engine ended the request without a result") from None
        except QueueFullError as exc:
            self.finished = True
            raise APIError(503, f"server overloaded: {exc}", code="queue_full",
                           headers={"Retry-After": str(math.ceil(exc.retry_after_s))}) from None
        except EngineUnavailableError as exc:
            self.finished = True
            raise APIError(503, str(exc), code="engine_unavailable") from None
        except ValueError as exc:
            self.finished = True
            raise bad_request(str(exc)) from None
        except RequestFailedError as exc:
            self.finished = True
            raise APIError(500, f"the engine failed the request: {exc}", code="engine_error") from None
        if out.finished:
            self.finished = True
            if out.finish_reason == "abort":
                raise APIError(500, "the engine aborted the request", code="aborted")
        return out

    async def aclose(self) -> None:
        if not self.finished:
            self.finished = True
            self.client.abort(self.rid)
        await self._outputs.aclose()


class GenerationStream(StreamingResponse):
    """An SSE response over `body`; closes `generation` however the response ends (incl. never started)."""

    def __init__(self, body: AsyncIterator[bytes], generation: Generation) -> None:
        super().__init__(body, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._generation.aclose()


_JSON = msgspec.json.Encoder()


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event carrying `payload` as compact UTF-8 JSON (msgspec: ~10x json.dumps)."""
    return b"data: " + _JSON.encode(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def cancel_on_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client disconnects first.

    Request handlers wrap their engine work in this so that a client who leaves while its
    request waits in the queue or is being generated has it aborted at once. The request body
    must already have been read (FastAPI does so before calling the handler)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientDisconnected
    return task.result()
