"""Failed requests grouped by cause: one line per cause, however many requests it hit.

Two errors share a cause when they differ only in numbers ("token id 2000 is out of the
vocabulary" and "token id 31337 is out of the vocabulary"; "prompt has 2100 tokens" and
"prompt has 2300 tokens"). A cause is shown by its first message.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def failure_cause(error: str) -> str:
    """The error with its numbers blanked out: the key that groups errors of one cause."""
    return _NUMBER.sub("#", error.strip())


@dataclass(frozen=True)
class FailureGroup:
    """Requests that failed for one cause: how many, and the first message seen."""

    count: int
    example: str


def group_failures(errors: Iterable[str]) -> list[FailureGroup]:
    """Errors grouped by `failure_cause`, most frequent first (ties: first seen first)."""
    groups: dict[str, list] = {}
    for error in errors:
        group = groups.setdefault(failure_cause(error), [0, error])
        group[0] += 1
    return sorted((FailureGroup(n, example) for n, example in groups.values()), key=lambda g: -g.count)
