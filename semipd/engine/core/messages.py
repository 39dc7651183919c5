"""Typed messages between the API process and the engine-core process (msgspec, msgpack on ZeroMQ).

API -> core (one socket, PUSH -> PULL)::

    AddRequest       a tokenized request with its sampling settings and its arrival time at the API
    AbortRequests    ids the API no longer wants (client gone, stop string matched)
    ClientEvents     lifecycle times as clients saw them (first token, tokens, completion), batched
    SetAllocation    a manual SM split; answered by AllocationResult
    Shutdown         stop the core loop and exit

core -> API (one socket, PUSH -> PULL)::

    EngineReady      the model is loaded: what the API needs to tokenize and validate
    EngineFailed     start-up failed (the message says why); the core exits
    StepOutputs      one engine step's token-id deltas, plus requests it refused or failed
    StatusSnapshot   `get_status()` of the engine, published every `status_interval_s`
    AllocationResult the split applied (or the error) for a SetAllocation

Times are ``time.monotonic()`` seconds, which is one clock for every process of a host.
Structs are encoded as arrays (``array_like``) to keep the per-step messages small and fast.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import msgspec
import numpy as np

from semipd.engine.sampling_params import SamplingParams


class Params(msgspec.Struct, array_like=True, frozen=True):
    """`SamplingParams` on the wire (the core keeps stop strings out: the API matches them)."""

    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None
    stop_token_ids: list[int]
    ignore_eos: bool

    @classmethod
    def of(cls, p: SamplingParams) -> Params:
        return cls(p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed, list(p.stop_token_ids), p.ignore_eos)

    def to_sampling_params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              top_k=self.top_k, seed=self.seed, stop_token_ids=list(self.stop_token_ids),
                              ignore_eos=self.ignore_eos)


# -- API -> core ----------------------------------------------------------------------------------
class AddRequest(msgspec.Struct, tag="add", array_like=True):
    rid: str
    prompt_token_ids: list[int]
    params: Params
    arrival_time: float


class AbortRequests(msgspec.Struct, tag="abort", array_like=True):
    rids: list[str]


class ClientEvents(msgspec.Struct, tag="events", array_like=True):
    """Lifecycle times the API observed when it handed tokens to clients.

    ``first_tokens`` and ``tokens`` are (rid, time); ``completions`` (rid, output tokens, success,
    time); ``aborts`` (rid, time) for requests that ended early (client gone)."""

    first_tokens: list[tuple[str, float]]
    tokens: list[tuple[str, float]]
    completions: list[tuple[str, int, bool, float]]
    aborts: list[tuple[str, float]]


class SetAllocation(msgspec.Struct, tag="set_allocation", array_like=True):
    call_id: int
    prefill_percentage: float
    decode_percentage: float


class Shutdown(msgspec.Struct, tag="shutdown", array_like=True):
    pass


CoreInput = AddRequest | AbortRequests | ClientEvents | SetAllocation | Shutdown


# -- core -> API ----------------------------------------------------------------------------------
class TokenDelta(msgspec.Struct, array_like=True, gc=False):
    """What one step produced for one request: the new token ids and, when it ended, why.
    ``finish_reason``: "stop" (EOS or a stop token), "length" (max_tokens or the context)."""

    rid: str
    new_token_ids: list[int]
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


class EngineReady(msgspec.Struct, tag="ready", array_like=True):
    pid: int
    max_model_len: int
    vocab_size: int
    bos_token_id: int | None
    eos_token_ids: list[int]
    tokenizer_dir: str | None
    """Directory of ``tokenizer.json``; None for the byte-level stand-in."""


class EngineFailed(msgspec.Struct, tag="failed", array_like=True):
    message: str


class StepOutputs(msgspec.Struct, tag="outputs", array_like=True):
    deltas: list[TokenDelta]
    rejected: list[tuple[str, str]]
    """(rid, reason): requests the engine refused (an invalid request: HTTP 400)."""
    failed: list[tuple[str, str]]
    """(rid, reason): requests a failed step aborted (HTTP 500)."""


class StatusSnapshot(msgspec.Struct, tag="status", array_like=True):
    time: float
    status: dict[str, Any]


class AllocationResult(msgspec.Struct, tag="allocation", array_like=True):
    call_id: int
    applied: dict[str, float] | None
    error: str | None


CoreOutput = EngineReady | EngineFailed | StepOutputs | StatusSnapshot | AllocationResult


def _enc_hook(obj: Any) -> Any:
    """Status dicts may hold numpy scalars and arrays, enums or dataclasses: make them plain."""
    if isinstance(obj, np.generic | np.ndarray):
        return obj.tolist()
    if isinstance(obj, enum.Enum):
        return obj.value
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot encode {type(obj).__name__}")


def encoder() -> msgspec.msgpack.Encoder:
    return msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def input_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(CoreInput)


def output_decoder() -> msgspec.msgpack.Decoder:
    return msgspec.msgpack.Decoder(CoreOutput)
