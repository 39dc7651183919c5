"""JSON request bodies into pydantic models: `parse_body`, and their OpenAPI schema (`openapi_body`).

The handlers read bodies themselves instead of letting FastAPI do it, so that the work scales
safely with the body: a body over `OFFLOAD_BYTES` is decoded and validated in a worker thread,
not on the event loop; top-level lists with a cap (chat ``messages``) are counted before
validation; and text that UTF-8 cannot carry (a lone surrogate such as ``"\\ud800"``, which JSON
escapes can spell) is refused with a 400 naming the field. The body's size is bounded before it
gets here (`semipd.server.body_limit`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from semipd.server.errors import CLIENT_CLOSED_REQUEST, APIError, bad_request, validation_error

M = TypeVar("M", bound=BaseModel)

OFFLOAD_BYTES = 64 * 1024
"""Bodies larger than this are decoded and validated in a worker thread."""


def _is_json(content_type: str | None) -> bool:
    """FastAPI's rule: no Content-Type, ``application/json`` or ``application/*+json``."""
    if not content_type:
        return True
    mime = content_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _has_lone_surrogate(text: str) -> bool:
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _find_bad_text(value: Any) -> bool:
    """Whether `value` (decoded JSON) holds a string with a lone surrogate, as a value or a key."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _check_text(body: Any) -> None:
    """400 naming the top-level field whose text is not valid Unicode (no name when it is a key)."""
    if not isinstance(body, dict):
        if _find_bad_text(body):
            raise bad_request("the request body holds text that is not valid Unicode (a lone surrogate)")
        return
    for key, value in body.items():
        if _has_lone_surrogate(key):
            raise bad_request("a field name is not valid Unicode (a lone surrogate)")
        if _find_bad_text(value):
            raise bad_request(f"{key}: the text is not valid Unicode (a lone surrogate)", param=key)


def _check_caps(body: Any, caps: Mapping[str, int]) -> None:
    if not isinstance(body, dict):
        return
    for name, cap in caps.items():
        value = body.get(name)
        if isinstance(value, list) and len(value) > cap:
            raise bad_request(f"{name}: at most {cap} items are accepted, got {len(value)}", param=name,
                              code="too_many_items")


def decode_body(raw: bytes, model: type[M], caps: Mapping[str, int]) -> M:
    """`raw` (JSON) as a `model`; APIError 400 naming the field for anything wrong with it."""
    if not raw:
        raise bad_request("the request body is empty; send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad_request(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    _check_text(body)
    _check_caps(body, caps)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise validation_error(exc.errors(include_url=False, include_input=False)) from None


async def parse_body(request: Request, model: type[M], caps: Mapping[str, int] | None = None) -> M:
    """The request's JSON body as a `model`. `caps` bounds the length of top-level list fields
    (checked before validation). APIError 400 for a body that is not JSON, not valid Unicode, or
    not a valid `model`."""
    if not _is_json(request.headers.get("content-type")):
        raise bad_request("the request body must be JSON (Content-Type: application/json)",
                          code="invalid_content_type")
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise APIError(CLIENT_CLOSED_REQUEST, "the client closed the connection") from None
    caps = caps or {}
    if len(raw) > OFFLOAD_BYTES:
        return await asyncio.to_thread(decode_body, raw, model, caps)
    return decode_body(raw, model, caps)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` (pydantic JSON schema) with its ``$defs`` references inlined (the models are not recursive)."""
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return resolve(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


def openapi_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads a `model` with `parse_body` (FastAPI cannot see it)."""
    schema = _inline_refs(model.model_json_schema())
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}
