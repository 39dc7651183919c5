"""Checks on the files a command will write, made before it does its long work."""

from __future__ import annotations

import os
from pathlib import Path


def check_output_path(path: str | Path | None, flag: str) -> None:
    """Raise ValueError naming `flag` when a report could not be written to `path` (a missing or
    read-only folder, or a folder in its place), so the error comes before a long run, not after it."""
    if path is None or str(path) == "":
        return
    path = Path(path)
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a directory: give a file name")
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: the directory {folder} does not exist (create it first)")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag} {path}: the directory {folder} is not writable")
