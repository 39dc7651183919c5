"""Attach the seed's metrics hooks to any scheduler object (`integrate_semi_pd_metrics_with_scheduler`).

Requests and batches are duck-typed, so the hooks fit this project's schedulers as well as
SGLang-style ones. Accepted shapes:

- request id: the request itself if it is a ``str``, else ``req.rid``, else ``req.request_id``
  (converted with ``str``);
- input length: ``len(req.origin_input_ids)``, ``req.num_prompt_tokens``, ``req.input_length`` or
  ``len(req.prompt_token_ids)``, the first present (0 if none);
- output length: ``req.output_length``, ``req.num_output_tokens``, ``len(req.output_ids)`` or
  ``len(req.output_token_ids)``, the first present (0 if none);
- batch requests: ``batch.reqs``, ``batch.requests``, ``batch.prefills`` (prefill chunks: items
  with a ``.request``; prefill end is recorded only for chunks whose ``is_last`` is true), or
  the batch itself if iterable. Items with a ``.request`` and no id are unwrapped.

An object of none of these shapes raises TypeError: that is a programming error, found at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Any

from semipd.metrics.collector import SemiPDMetricsCollector


class InstanceRole(Enum):
    """Which phase a scheduler (and its collector) runs."""

    PREFILL = "prefill"
    """A prefill process: a request is handed off after its first token."""
    DECODE = "decode"
    """A decode process: a request unknown here arrives when decode first sees it."""
    UNIFIED = "unified"
    """Both phases in one process with one collector (green contexts, the simulator, the baseline)."""


def get_request_id(req: Any) -> str:
    """The id of a duck-typed request (see the module docstring)."""
    if isinstance(req, str):
        return req
    for name in ("rid", "request_id"):
        value = getattr(req, name, None)
        if value is not None:
            return str(value)
    raise TypeError(f"cannot find a request id (rid, request_id) on {type(req).__name__}")


def _first_length(req: Any, names: tuple[tuple[str, bool], ...]) -> int:
    for name, is_sequence in names:
        value = getattr(req, name, None)
        if value is not None:
            return len(value) if is_sequence else int(value)
    return 0


def get_input_length(req: Any) -> int:
    """The prompt length of a duck-typed request (0 if unknown)."""
    return _first_length(req, (("origin_input_ids", True), ("num_prompt_tokens", False), ("input_length", False),
                               ("prompt_token_ids", True)))


def get_output_length(req: Any) -> int:
    """The number of generated tokens of a duck-typed request (0 if unknown)."""
    return _first_length(req, (("output_length", False), ("num_output_tokens", False), ("output_ids", True),
                               ("output_token_ids", True)))


def get_batch_items(batch: Any) -> list[Any]:
    """The items of a duck-typed batch (requests, or prefill chunks with a ``.request``)."""
    for name in ("reqs", "requests", "prefills"):
        items = getattr(batch, name, None)
        if items is not None:
            return list(items)
    if isinstance(batch, Iterable) and not isinstance(batch, str | bytes):
        return list(batch)
    raise TypeError(f"cannot find the requests (reqs, requests, prefills, iteration) of {type(batch).__name__}")


def _unwrap(item: Any) -> Any:
    if getattr(item, "rid", None) is None and getattr(item, "request_id", None) is None:
        inner = getattr(item, "request", None)
        if inner is not None:
            return inner
    return item


def integrate_semi_pd_metrics_with_scheduler(
    scheduler: Any, role: InstanceRole, metrics_collector: SemiPDMetricsCollector | None = None
) -> SemiPDMetricsCollector:
    """Attach metrics hooks to `scheduler` and return the collector they record into.

    Sets ``scheduler.semi_pd_metrics_collector``, ``scheduler.semi_pd_instance_role`` and these
    callables (instance attributes, so any object works):

    - ``semi_pd_on_request_arrival(req)``
    - ``semi_pd_on_batch_prefill_start(batch)`` / ``semi_pd_on_batch_prefill_end(batch)``
    - ``semi_pd_on_first_token_generated(req)`` (with role PREFILL this also hands the request off)
    - ``semi_pd_on_decode_start(req)`` (with role DECODE an unknown request is recorded as arriving)
    - ``semi_pd_on_token_generated(req)``: one streamed token after the first
    - ``semi_pd_on_request_finished(req, output_length=None, success=True)``: `output_length`
      defaults to the request's own count
    - ``semi_pd_on_request_aborted(req)``

    A new collector (default arguments) is created when none is given.
    """
    if not isinstance(role, InstanceRole):
        raise ValueError(f"role must be an InstanceRole, got {role!r}")
    collector = metrics_collector if metrics_collector is not None else SemiPDMetricsCollector()

    def on_request_arrival(req: Any) -> None:
        collector.record_request_arrival(get_request_id(req), get_input_length(req))

    def on_batch_prefill_start(batch: Any) -> None:
        for item in get_batch_items(batch):
            collector.record_prefill_start(get_request_id(_unwrap(item)))

    def on_batch_prefill_end(batch: Any) -> None:
        for item in get_batch_items(batch):
            if getattr(item, "is_last", True) is False:
                continue
            collector.record_prefill_end(get_request_id(_unwrap(item)))

    def on_first_token_generated(req: Any) -> None:
        rid = get_request_id(req)
        collector.record_first_token(rid)
        if role is InstanceRole.PREFILL:
            collector.record_handoff(rid)

    def on_decode_start(req: Any) -> None:
        rid = get_request_id(req)
        if role is InstanceRole.DECODE and not collector.is_in_flight(rid):
            collector.record_request_arrival(rid, get_input_length(req))
        collector.record_decode_start(rid)

    def on_token_generated(req: Any) -> None:
        collector.record_token(get_request_id(req))

    def on_request_finished(req: Any, output_length: int | None = None, success: bool = True) -> None:
        n = get_output_length(req) if output_length is None else output_length
        collector.record_request_completion(get_request_id(req), n, success=success)

    def on_request_aborted(req: Any) -> None:
        collector.record_request_abort(get_request_id(req))

    hooks = {
        "semi_pd_metrics_collector": collector,
        "semi_pd_instance_role": role,
        "semi_pd_on_request_arrival": on_request_arrival,
        "semi_pd_on_batch_prefill_start": on_batch_prefill_start,
        "semi_pd_on_batch_prefill_end": on_batch_prefill_end,
        "semi_pd_on_first_token_generated": on_first_token_generated,
        "semi_pd_on_decode_start": on_decode_start,
        "semi_pd_on_token_generated": on_token_generated,
        "semi_pd_on_request_finished": on_request_finished,
        "semi_pd_on_request_aborted": on_request_aborted,
    }
    try:
        for name, value in hooks.items():
            setattr(scheduler, name, value)
    except AttributeError as exc:
        raise TypeError(f"cannot attach metrics hooks to {type(scheduler).__name__}: {exc}") from exc
    return collector
