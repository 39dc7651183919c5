"""msgpack encoding of `RequestMetrics` records, so a process can ship them through a pipe.

Format: a map ``{"version": 1, "time": <sender's clock>, "fields": [...], "records": [[...], ...]}``
with one row per record, its values in ``fields`` order. Times are the sender's clock seconds:
processes on one host share ``time.monotonic``, so records from several processes can be joined.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import msgpack

from semipd.metrics.request import RequestMetrics

SNAPSHOT_VERSION = 1
FIELDS = (
    "request_id", "arrival_time", "prefill_start_time", "first_token_time", "prefill_end_time",
    "decode_start_time", "completion_time", "input_length", "output_length", "success", "aborted",
    "handed_off", "token_times",
)


def record_row(rec: RequestMetrics) -> list[Any]:
    """`rec`'s values in `FIELDS` order (its token times copied)."""
    row = [getattr(rec, name) for name in FIELDS]
    if rec.token_times is not None:
        row[-1] = list(rec.token_times)
    return row


def encode_rows(rows: Iterable[list[Any]], time: float) -> bytes:
    """Encode rows made by `record_row`, taken at clock time `time`."""
    return msgpack.packb(
        {"version": SNAPSHOT_VERSION, "time": time, "fields": list(FIELDS), "records": list(rows)}, use_bin_type=True
    )


def decode_snapshot(data: bytes) -> list[RequestMetrics]:
    """The records of an `encode_rows` payload; raises ValueError for anything else."""
    try:
        payload: Any = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ValueError(f"not a metrics snapshot: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("version") != SNAPSHOT_VERSION:
        raise ValueError("not a metrics snapshot of version 1")
    fields = payload.get("fields")
    if fields != list(FIELDS):
        raise ValueError(f"snapshot fields {fields!r} differ from {list(FIELDS)!r}")
    out = []
    for row in payload.get("records", []):
        if not isinstance(row, list) or len(row) != len(FIELDS):
            raise ValueError(f"malformed snapshot record {row!r}")
        out.append(RequestMetrics(*row))
    return out
