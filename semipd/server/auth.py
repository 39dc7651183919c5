"""Optional API key: every route except /health needs ``Authorization: Bearer <key>``.

A pure ASGI middleware (it neither buffers nor wraps streaming bodies); refusals are 401 in
OpenAI's error format. CORS preflight requests (``OPTIONS`` with ``Access-Control-Request-Method``)
pass without a key: browsers never send credentials on them. With ``--allowed-origins`` the CORS
middleware answers them before they get here; without it they get 405.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from semipd.server.errors import APIError

OPEN_PATHS = frozenset({"/health"})


class APIKeyMiddleware:
    def __init__(self, app: ASGIApp, api_key: str) -> None:
        if not api_key:
            raise ValueError("api_key must be a non-empty string")
        self.app = app
        self._expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] in OPEN_PATHS or _is_preflight(scope)
                or self._authorized(scope)):
            await self.app(scope, receive, send)
            return
        response = APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.",
                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}).response()
        await response(scope, receive, send)

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False


def _is_preflight(scope: Scope) -> bool:
    return scope["method"] == "OPTIONS" and any(name == b"access-control-request-method"
                                                for name, _ in scope["headers"])
