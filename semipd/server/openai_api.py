"""The OpenAI endpoints: /v1/completions, /v1/chat/completions (streaming and not), /v1/models.

Streaming answers are SSE in OpenAI's chunk format, ending with ``data: [DONE]``; with
``stream_options.include_usage`` every chunk carries ``"usage": null`` and a last chunk with
no choices carries the usage. The first engine output is awaited before the response starts,
so a full queue (503) or a refused request (400) still gets a proper status code.
"""

from __future__ import annotations

import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from semipd.engine.core.interface import EngineClient
from semipd.engine.sampling_params import RequestOutput, SamplingParams
from semipd.server.errors import CLIENT_CLOSED_REQUEST, APIError
from semipd.server.generation import (
    SSE_DONE,
    ClientDisconnected,
    Generation,
    GenerationStream,
    cancel_on_disconnect,
    sse,
)
from semipd.server.limits import ServerLimits
from semipd.server.prompts import chat_prompt_ids
from semipd.server.protocol import ChatCompletionRequest, CompletionRequest
from semipd.server.request_body import openapi_body, parse_body
from semipd.server.sampling import (
    COMPLETION_DEFAULT_MAX_TOKENS,
    check_model,
    check_prompt_ids,
    check_supported,
    check_text_length,
    completion_prompt_ids,
    sampling_params,
)


@dataclass
class ServerState:
    """What the handlers share, kept on ``app.state.semipd``."""

    client: EngineClient
    served_model_name: str
    created: int
    limits: ServerLimits


def server_state(request: Request) -> ServerState:
    return request.app.state.semipd


def _usage(out: RequestOutput) -> dict[str, int]:
    return {"prompt_tokens": out.num_prompt_tokens, "completion_tokens": out.num_output_tokens,
            "total_tokens": out.num_prompt_tokens + out.num_output_tokens}


class ResponseFormat(ABC):
    """Response and chunk bodies of one endpoint for one request."""

    object_full = ""
    object_chunk = ""

    def __init__(self, rid: str, model: str, include_usage: bool) -> None:
        self.rid = rid
        self.model = model
        self.created = int(time.time())
        self.include_usage = include_usage

    def _envelope(self, obj: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.rid, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def full(self, out: RequestOutput) -> dict[str, Any]:
        body = self._envelope(self.object_full, [self._full_choice(out)])
        body["usage"] = _usage(out)
        return body

    def chunk(self, choice: dict[str, Any]) -> dict[str, Any]:
        body = self._envelope(self.object_chunk, [choice])
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, out: RequestOutput) -> dict[str, Any]:
        body = self._envelope(self.object_chunk, [])
        body["usage"] = _usage(out)
        return body

    def start_chunks(self) -> list[dict[str, Any]]:
        return []

    @abstractmethod
    def _full_choice(self, out: RequestOutput) -> dict[str, Any]:
        """The one choice of a non-streaming response."""

    @abstractmethod
    def output_chunks(self, out: RequestOutput) -> list[dict[str, Any]]:
        """The SSE chunks for one engine output: one per output with new tokens, even when their text is
        still empty (an incomplete UTF-8 character), so clients can time every token; none for an
        output that adds nothing."""


class CompletionFormat(ResponseFormat):
    object_full = object_chunk = "text_completion"

    def _full_choice(self, out: RequestOutput) -> dict[str, Any]:
        return {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}

    def output_chunks(self, out: RequestOutput) -> list[dict[str, Any]]:
        if not (out.new_token_ids or out.new_text or out.finished):
            return []
        return [self.chunk({"index": 0, "text": out.new_text, "logprobs": None,
                            "finish_reason": out.finish_reason if out.finished else None})]


class ChatFormat(ResponseFormat):
    object_full = "chat.completion"
    object_chunk = "chat.completion.chunk"

    def _full_choice(self, out: RequestOutput) -> dict[str, Any]:
        return {"index": 0, "message": {"role": "assistant", "content": out.text}, "logprobs": None,
                "finish_reason": out.finish_reason}

    def start_chunks(self) -> list[dict[str, Any]]:
        return [self.chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})]

    def output_chunks(self, out: RequestOutput) -> list[dict[str, Any]]:
        chunks = []
        if out.new_token_ids or out.new_text:
            chunks.append(self.chunk({"index": 0, "delta": {"content": out.new_text}, "logprobs": None,
                                      "finish_reason": None}))
        if out.finished:
            chunks.append(self.chunk({"index": 0, "delta": {}, "logprobs": None, "finish_reason": out.finish_reason}))
        return chunks


async def _sse_body(gen: Generation, out: RequestOutput, fmt: ResponseFormat) -> AsyncIterator[bytes]:
    for chunk in fmt.start_chunks():
        yield sse(chunk)
    try:
        while True:
            for chunk in fmt.output_chunks(out):
                yield sse(chunk)
            if out.finished:
                break
            out = await gen.next()
        if fmt.include_usage:
            yield sse(fmt.usage_chunk(out))
    except APIError as exc:
        yield sse(exc.body())
    yield SSE_DONE


async def _collect(gen: Generation) -> RequestOutput:
    try:
        out = await gen.next()
        while not out.finished:
            out = await gen.next()
        return out
    finally:
        await gen.aclose()


async def _first(gen: Generation) -> RequestOutput:
    try:
        return await gen.next()
    except BaseException:
        await gen.aclose()
        raise


async def _respond(request: Request, client: EngineClient, prompt_ids: list[int], params: SamplingParams,
                   stream: bool, fmt: ResponseFormat, arrival_time: float) -> Response:
    gen = Generation(client, fmt.rid, prompt_ids, params, arrival_time)
    try:
        if not stream:
            return JSONResponse(fmt.full(await cancel_on_disconnect(request, _collect(gen))))
        first = await cancel_on_disconnect(request, _first(gen))
    except ClientDisconnected:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    return GenerationStream(_sse_body(gen, first, fmt), gen)


def _include_usage(body: CompletionRequest | ChatCompletionRequest) -> bool:
    return body.stream_options is not None and body.stream_options.include_usage


router = APIRouter()


@router.post("/v1/completions", openapi_extra=openapi_body(CompletionRequest))
async def create_completion(request: Request) -> Response:
    arrival = time.monotonic()
    state = server_state(request)
    body = await parse_body(request, CompletionRequest)
    check_model(body, state.served_model_name)
    check_supported(body)
    ids = await completion_prompt_ids(body, state.client)
    params = sampling_params(body, len(ids), state.client, body.max_tokens, "max_tokens",
                             COMPLETION_DEFAULT_MAX_TOKENS)
    fmt = CompletionFormat(f"cmpl-{uuid.uuid4().hex}", state.served_model_name, _include_usage(body))
    return await _respond(request, state.client, ids, params, body.stream, fmt, arrival)


@router.post("/v1/chat/completions", openapi_extra=openapi_body(ChatCompletionRequest))
async def create_chat_completion(request: Request) -> Response:
    arrival = time.monotonic()
    state = server_state(request)
    body = await parse_body(request, ChatCompletionRequest, {"messages": state.limits.max_chat_messages})
    check_model(body, state.served_model_name)
    check_supported(body)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
    check_text_length(sum(len(m["content"]) for m in messages), state.client.max_model_len, "messages")
    ids = await chat_prompt_ids(state.client, messages)
    check_prompt_ids(ids, state.client, "messages")
    if body.max_completion_tokens is not None:
        max_tokens, param = body.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, param = body.max_tokens, "max_tokens"
    params = sampling_params(body, len(ids), state.client, max_tokens, param, None)
    fmt = ChatFormat(f"chatcmpl-{uuid.uuid4().hex}", state.served_model_name, _include_usage(body))
    return await _respond(request, state.client, ids, params, body.stream, fmt, arrival)


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.served_model_name, "object": "model", "created": state.created, "owned_by": "semipd",
            "max_model_len": state.client.max_model_len}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_card(server_state(request))]}


@router.get("/v1/models/{model:path}")
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    state = server_state(request)
    if model != state.served_model_name:
        raise APIError(404, f"The model `{model}` does not exist.", param="model", code="model_not_found",
                       error_type="invalid_request_error")
    return _model_card(state)
