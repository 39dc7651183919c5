"""The server's limits on requests (`ServerLimits`) and the bounds derived from the context length.

A request body is limited in bytes (413 past it), a text prompt in characters (400 before it is
tokenized), a chat in messages (400 before it is validated), and the upload of a body in time
(408). The defaults follow ``max_model_len``, so a server for a longer context accepts bigger
requests; ``semipd serve`` flags override them (docs/HARDENING.md, "Server limits"). Imports
nothing of the server, so the command line can show the defaults without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass

BODY_BYTES_PER_TOKEN = 64
"""Body bytes allowed per token of context by default: room for text written as JSON escapes
(``\\u00e9`` is 6 bytes for one character) and for token-id lists (``123456,`` is 7)."""
BODY_ALLOWANCE_BYTES = 1 << 20
"""Body bytes allowed by default on top of the per-token share (options, chat message envelopes)."""
MAX_CHARS_PER_TOKEN = 64
"""Most characters one token is assumed to cover, on average over a text. A text prompt of more than
``max_model_len * MAX_CHARS_PER_TOKEN`` characters is taken to have more tokens than the context
holds and is refused without tokenizing it. This is an assumption, not read from the tokenizer: a
text made mostly of tokens longer than this (long runs of one character that a vocabulary merges)
would be refused although it might fit."""
DEFAULT_MAX_CHAT_MESSAGES = 4096
DEFAULT_BODY_TIMEOUT_S = 60.0


def default_max_body_bytes(max_model_len: int) -> int:
    """The default body limit for a context of `max_model_len` tokens."""
    return BODY_BYTES_PER_TOKEN * max_model_len + BODY_ALLOWANCE_BYTES


def max_text_chars(max_model_len: int) -> int:
    """Characters past which a text cannot fit a context of `max_model_len` tokens (see `MAX_CHARS_PER_TOKEN`)."""
    return MAX_CHARS_PER_TOKEN * max_model_len


@dataclass(frozen=True)
class ServerLimits:
    """Per-request limits of the API server.

    ``max_body_bytes``: largest request body (None: `default_max_body_bytes` of the engine's
    context length). ``max_chat_messages``: most messages in one chat request.
    ``body_timeout_s``: seconds a client has, from the end of its request head, to send the whole
    body (408 past it)."""

    max_body_bytes: int | None = None
    max_chat_messages: int = DEFAULT_MAX_CHAT_MESSAGES
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_body_bytes is not None and self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes must be >= 1, got {self.max_body_bytes}")
        if self.max_chat_messages < 1:
            raise ValueError(f"max_chat_messages must be >= 1, got {self.max_chat_messages}")
        if not self.body_timeout_s > 0:
            raise ValueError(f"body_timeout_s must be > 0, got {self.body_timeout_s}")

    def body_bytes(self, max_model_len: int) -> int:
        """The body limit in force for an engine whose context is `max_model_len` tokens."""
        return self.max_body_bytes if self.max_body_bytes is not None else default_max_body_bytes(max_model_len)
