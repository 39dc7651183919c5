"""Reading an Azure LLM inference trace CSV (columns TIMESTAMP, ContextTokens, GeneratedTokens).

The reader is strict about content and lenient about form: a UTF-8 byte-order mark and CRLF line
ends (what a spreadsheet export writes) are accepted, blank rows are skipped, extra columns are
ignored, and every malformed row is reported as a `ValueError` that names the file, the line and
the field. `semipd.workload.load_azure_trace` turns the rows into a workload.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TRACE_COLUMNS: tuple[str, ...] = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_INT64_MAX = np.iinfo(np.int64).max


@dataclass(frozen=True)
class TraceRows:
    """The rows of a trace, in file order."""

    timestamps: np.ndarray
    """datetime64[ns]"""
    input_lens: np.ndarray
    """int64 >= 0 (ContextTokens)"""
    output_lens: np.ndarray
    """int64 >= 0 (GeneratedTokens)"""


def read_azure_trace_csv(path: str | Path) -> TraceRows:
    """The rows of the trace CSV at `path`; ValueError (naming the file, and the line for a bad
    row) when it is missing, not UTF-8 text, lacks a column, or holds a malformed row: too few
    fields, a timestamp numpy cannot read, or a token count that is not a whole number >= 0."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"trace file not found: {path}")
    stamps: list[np.datetime64] = []
    inputs: list[int] = []
    outputs: list[int] = []
    line = 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            names = [h.strip() for h in next(reader, [])]
            missing = [c for c in TRACE_COLUMNS if c not in names]
            if missing:
                raise ValueError(f"trace {path} is not an Azure LLM trace: it needs the columns "
                                 f"{', '.join(TRACE_COLUMNS)}; its first line has {', '.join(names) or 'nothing'}")
            ti, ci, gi = (names.index(c) for c in TRACE_COLUMNS)
            width = max(ti, ci, gi) + 1
            for row in reader:
                line = reader.line_num
                if not any(field.strip() for field in row):
                    continue
                where = f"trace {path}, line {line}"
                if len(row) < width:
                    raise ValueError(f"{where}: expected {len(names)} fields ({', '.join(names)}), got {len(row)}")
                stamps.append(_timestamp(row[ti], where))
                inputs.append(_token_count(row[ci], "ContextTokens", where))
                outputs.append(_token_count(row[gi], "GeneratedTokens", where))
    except UnicodeDecodeError as exc:
        raise ValueError(f"trace {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except csv.Error as exc:
        raise ValueError(f"trace {path}, line {line}: {exc}") from None
    return TraceRows(np.array(stamps, dtype="datetime64[ns]"), np.array(inputs, dtype=np.int64),
                     np.array(outputs, dtype=np.int64))


def _timestamp(text: str, where: str) -> np.datetime64:
    try:
        stamp = np.datetime64(text.strip(), "ns")
    except (ValueError, OverflowError):
        stamp = np.datetime64("NaT")
    if np.isnat(stamp):
        raise ValueError(f"{where}: TIMESTAMP must be a date and time like 2023-11-16 18:15:46.68, got {text!r}")
    return stamp


def _token_count(text: str, field: str, where: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"{where}: {field} must be a whole number of tokens, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{where}: {field} must be >= 0, got {value}")
    if value > _INT64_MAX:
        raise ValueError(f"{where}: {field} is too large ({text.strip()})")
    return value
