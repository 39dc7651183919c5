"""Server-sent events: split a byte stream into ``data`` payloads, and read OpenAI stream chunks.

The decoder follows the SSE rules the OpenAI-compatible servers rely on: events end at a
blank line, ``data:`` lines (one optional space after the colon) are joined with newlines,
lines starting with ``:`` are comments, and ``\\n``, ``\\r\\n`` and ``\\r`` all end a line.
Bytes may arrive split anywhere, including inside a UTF-8 character.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Any

_EOL = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """Incremental decoder: `feed` bytes as they arrive, get back each completed event's data."""

    def __init__(self) -> None:
        self._text = codecs.getincrementaldecoder("utf-8")()
        self._buffer = ""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data of every event completed by them, in order."""
        self._buffer += self._text.decode(chunk)
        events: list[str] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            line, self._buffer = self._buffer[: cut[0]], self._buffer[cut[1] :]
            if not line:
                if self._data:
                    events.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(" ") else value)
            # Other fields (event:, id:, retry:) and comments (":") carry nothing we use.

    def flush(self) -> list[str]:
        """End of stream: return the data of a last event that had no closing blank line."""
        events = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer, self._data = "", []
        return events


def _line_end(text: str) -> tuple[int, int] | None:
    """(end of the first line, start of the next) or None while the line is incomplete.

    A trailing ``\\r`` is held back: it might be the first half of ``\\r\\n``.
    """
    match = _EOL.search(text)
    if match is None or (match.group() == "\r" and match.end() == len(text)):
        return None
    return match.start(), match.end()


@dataclass(frozen=True)
class StreamChunk:
    """What one ``chat.completion.chunk`` / ``text_completion`` chunk carries for timing."""

    text: str = ""
    is_token: bool = False
    """The chunk carries a generated token: non-empty text, or a text/content field that is
    empty (a token that decodes to no text yet) on a chunk that is neither a chat role chunk
    nor a closing ``finish_reason`` chunk. vLLM's client times such chunks too."""
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str = ""


def parse_chunk(data: dict[str, Any]) -> StreamChunk:
    """Read a decoded JSON chunk of either endpoint.

    Text is the first choice's ``text`` (completions) or ``delta.content`` (chat; a reasoning
    model's ``delta.reasoning_content`` counts too). Usage comes from the chunk's ``usage``
    (vLLM and SGLang send it in a final chunk with empty ``choices`` when
    ``stream_options.include_usage`` is set). An ``error`` object, or an object whose
    ``object`` is ``"error"`` (older vLLM), makes the chunk an error.
    """
    if "error" in data or data.get("object") == "error":
        err = data.get("error", data)
        message = err.get("message", err) if isinstance(err, dict) else err
        return StreamChunk(error=f"server error in stream: {message}")
    text, is_token = "", False
    choices = data.get("choices") or []
    if choices:
        choice = choices[0]
        if "delta" in choice:
            delta = choice.get("delta") or {}
            text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            field_present = isinstance(delta.get("content"), str) and "role" not in delta
        else:
            text = choice.get("text") or ""
            field_present = isinstance(choice.get("text"), str)
        is_token = bool(text) or (field_present and choice.get("finish_reason") is None)
    usage = data.get("usage") or {}
    return StreamChunk(
        text=text,
        is_token=is_token,
        completion_tokens=usage.get("completion_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
    )
