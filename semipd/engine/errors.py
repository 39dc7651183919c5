"""Errors the engines raise (torch-free, so the API process can name them)."""

from __future__ import annotations


class StepError(RuntimeError):
    """A step failed; the requests of its batch (`rids`) were aborted. The cause is chained."""

    def __init__(self, rids: list[str], message: str) -> None:
        super().__init__(message)
        self.rids = rids
