"""Errors in OpenAI's format: ``{"error": {"message", "type", "param", "code"}}``.

Every failure the server reports, including FastAPI's request validation errors (400 here,
not FastAPI's 422), unknown routes and unexpected exceptions (500, logged, no traceback sent),
goes through `APIError` and the handlers installed by `install_error_handlers`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

CLIENT_CLOSED_REQUEST = 499
"""Status logged for requests whose client left before the answer (nobody receives it)."""

_TYPES: dict[int, str] = {
    401: "authentication_error",
    404: "not_found_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """An error answered to the client with `status_code` and an OpenAI error body."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        error_type: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status_code, "invalid_request_error")
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status_code, headers=self.headers or None)


def bad_request(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _field_name(loc: Sequence[Any]) -> str | None:
    """The top-level request field an error location points at (``("body", "stop", 0)`` -> ``"stop"``)."""
    parts = list(loc[1:] if loc and loc[0] == "body" else loc)
    return str(parts[0]) if parts else None


def validation_error(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """One 400 APIError describing pydantic/FastAPI validation `errors` (the first few of them)."""
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx") or {}
        return bad_request(f"request body is not valid JSON: {ctx.get('error', first.get('msg'))}", code="invalid_json")
    if first.get("type") == "extra_forbidden":
        name = _field_name(first.get("loc", ()))
        return bad_request(f"Unrecognized request argument supplied: {name}", param=name, code="unsupported_parameter")
    messages = []
    for err in errors[:3]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(loc) if loc else "body"
        messages.append(f"{where}: {err.get('msg', 'invalid')}")
    return bad_request("; ".join(messages), param=_field_name(first.get("loc", ())))


async def _api_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return exc.response()


async def _validation_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


async def _http_error_handler(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    return APIError(exc.status_code, str(exc.detail), headers=headers).response()


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error while serving %s %s", request.method, request.url.path, exc_info=exc)
    return APIError(500, "internal server error").response()


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of `app` in OpenAI's format."""
    app.add_exception_handler(APIError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
