"""The OpenAI-compatible HTTP server (`semipd serve`): `create_app` builds the FastAPI app around an engine."""

from semipd.server.app import create_app

__all__ = ["create_app"]
