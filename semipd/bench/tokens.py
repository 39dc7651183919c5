"""Counting prompt tokens on the client: a Hugging Face ``tokenizers`` file when the user has
one (``--tokenizer``), otherwise a simple heuristic.

The heuristic, max(words, ceil(characters / 4)), is what is left without a tokenizer; the
report uses the server's ``usage.prompt_tokens`` instead whenever the server sends usage.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol


class TokenCounter(Protocol):
    """Counts tokens in text. `vocab_size` is None when unknown (the heuristic)."""

    vocab_size: int | None

    def count(self, text: str) -> int: ...


class HeuristicCounter:
    """max(whitespace-separated words, ceil(characters / 4)): no vocabulary needed."""

    vocab_size: int | None = None

    def count(self, text: str) -> int:
        return max(len(text.split()), math.ceil(len(text) / 4))


class TokenizerCounter:
    """Exact counts from a ``tokenizer.json`` (the `tokenizers` library), special tokens excluded."""

    def __init__(self, path: str | Path) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ValueError("tokenizer: the `tokenizers` package is not installed (pip install tokenizers)") from exc
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise ValueError(f"tokenizer: no tokenizer.json at {path}")
        self._tokenizer = Tokenizer.from_file(str(file))
        self.vocab_size: int | None = self._tokenizer.get_vocab_size(with_added_tokens=False)

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)


def load_counter(path: str | Path | None) -> TokenCounter:
    """A `TokenizerCounter` for `path`, or the heuristic when `path` is None."""
    return HeuristicCounter() if path is None else TokenizerCounter(path)
