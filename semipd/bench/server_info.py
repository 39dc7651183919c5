"""What the benchmark learns about the server before it sends load.

Any OpenAI-compatible server lists its models (``/v1/models``; ours and vLLM give each one's
``max_model_len``). Ours also answers ``GET /semipd/status`` (mode, SM allocation, controller,
KV cache, ``max_num_seqs``, ``max_num_batched_tokens``, ...): the result file keeps it, so that
``semipd simulate --replay`` can rebuild the engine's configuration. The vocabulary size comes
from the status or the model card when either has it; otherwise, for our server, from one probe
request whose token id lies past the range to be sent (our server names the vocabulary size when
it refuses an id). Other servers simply leave these unknown.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from semipd.bench.client import api_url, auth_headers, error_message

_TIMEOUT_S = 30.0
_VOCAB_REFUSAL = re.compile(r"out of the vocabulary \(size (\d+)\)")


@dataclass(frozen=True)
class ServerInfo:
    """The served model and the limits requests must respect (None: unknown)."""

    model: str
    max_model_len: int | None = None
    vocab_size: int | None = None
    status: dict[str, Any] | None = None
    """``GET /semipd/status`` at discovery, when the server is ours."""

    @property
    def is_ours(self) -> bool:
        return self.status is not None


def discover(base_url: str, api_key: str | None, model: str | None, probe_token_id: int | None = None) -> ServerInfo:
    """Model (the first listed when `model` is None), context length, vocabulary size and status.
    Raises ValueError when `model` is None and the server lists none; with a `model` given, an
    unreachable server leaves everything else unknown. `probe_token_id`: a token id that will be
    sent, to ask our server about when its vocabulary size is not given otherwise."""
    return asyncio.run(_discover(base_url, api_key, model, probe_token_id))


def server_status(base_url: str, api_key: str | None) -> dict[str, Any] | None:
    """``GET /semipd/status`` (None when the server is not ours or does not answer)."""

    async def fetch() -> dict[str, Any] | None:
        async with _session() as session:
            return await _status(session, base_url, api_key)

    return asyncio.run(fetch())


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_TIMEOUT_S), trust_env=True)


async def _discover(base_url: str, api_key: str | None, model: str | None, probe_token_id: int | None) -> ServerInfo:
    async with _session() as session:
        cards = await _models(session, base_url, api_key, required=model is None)
        if model is None:
            if not cards:
                raise ValueError(f"{api_url(base_url, '/v1/models')} lists no models; pass --model")
            model = str(cards[0]["id"])
        card = next((c for c in cards if c.get("id") == model), {})
        status = await _status(session, base_url, api_key)
        vocab = _positive((status or {}).get("vocab_size")) or _positive(card.get("vocab_size"))
        if vocab is None and status is not None and probe_token_id is not None:
            vocab = await _probe_vocab(session, base_url, api_key, model, probe_token_id)
        max_len = _positive(card.get("max_model_len")) or _positive((status or {}).get("max_model_len"))
        return ServerInfo(model, max_len, vocab, status)


async def _models(session: aiohttp.ClientSession, base_url: str, api_key: str | None,
                  required: bool) -> list[dict[str, Any]]:
    url = api_url(base_url, "/v1/models")
    try:
        async with session.get(url, headers=auth_headers(api_key)) as resp:
            if resp.status != 200:
                raise ValueError(f"GET {url} returned HTTP {resp.status}: {error_message(await resp.text())}")
            data = (await resp.json()).get("data") or []
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError, AttributeError) as exc:
        if required:
            raise ValueError(f"cannot list models at {url}: {type(exc).__name__}: {exc}") from None
        return []
    return [c for c in data if isinstance(c, dict) and "id" in c]


async def _status(session: aiohttp.ClientSession, base_url: str, api_key: str | None) -> dict[str, Any] | None:
    try:
        async with session.get(api_url(base_url, "/semipd/status"), headers=auth_headers(api_key)) as resp:
            doc = await resp.json() if resp.status == 200 else None
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError, ValueError):
        return None
    return doc if isinstance(doc, dict) and "mode" in doc else None


async def _probe_vocab(session: aiohttp.ClientSession, base_url: str, api_key: str | None, model: str,
                       token_id: int) -> int | None:
    """Send one one-token request with `token_id`; our server's refusal names the vocabulary size."""
    body = {"model": model, "prompt": [token_id], "max_tokens": 1, "temperature": 0.0}
    try:
        async with session.post(api_url(base_url, "/v1/completions"), json=body,
                                headers=auth_headers(api_key)) as resp:
            text = await resp.text()
    except (TimeoutError, aiohttp.ClientError):
        return None
    found = _VOCAB_REFUSAL.search(text)
    return int(found.group(1)) if found else None


def _positive(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
