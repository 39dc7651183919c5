"""Measured performance profiles: tables of iteration times over SM counts, interpolated.

`semipd profile` measures a GPU + model and writes a profile; `load_profile` (also
`get_perf_model("path.json")`) turns it into a `PerfModel`, which the simulator
(``semipd simulate --perf-model FILE``) and the engine's ``profile`` predictor
(``semipd serve --predictor profile --profile FILE``) read. `profile_from_model` samples any
`PerfModel` on a grid into the same format (to test the format, or to seed a profile).

Format (JSON object, all times in milliseconds)::

    {
      "format": "semipd-profile/1",
      "name": "llama-3.1-8b-h100-measured",
      "total_sms": 132,
      "memory_bytes": 85899345920,            # device memory
      "weight_bytes": 16060055552,
      "activation_reserve_bytes": 3221225472, # kept free besides weights and KV cache
      "kv_bytes_per_token": 131072,
      "prefill": {
        "sms": [16, 32, ...],                 # increasing
        "tokens": [128, 512, 2048, ...],      # increasing; one fresh prompt of that many tokens
        "time_ms": [[...], ...],              # [len(sms)][len(tokens)]
        "attention_pair_ms": 1.1e-6           # ms per (new token, earlier token) pair on all SMs
      },
      "decode": {
        "sms": [...], "batch": [1, 8, 64, ...], "kv_tokens": [0, 16384, ...],  # kv_tokens: total over the batch
        "time_ms": [[[...]]]                  # [len(sms)][len(batch)][len(kv_tokens)]
      },
      "interference": {
        "splits": [[16, 116], [32, 100], ...],  # [prefill SMs, decode SMs], measured running together
                                               # (disjoint SMs; a device without partitions: [total, total])
        "prefill_slowdown": [1.03, ...],       # prefill time together / alone, per split (>= 1)
        "decode_slowdown": [1.10, ...]         # decode time together / alone, per split (>= 1)
      },
      "host_overhead_ms": {"prefill": 0.9, "decode": 0.4},  # optional (default 0): host time per step,
                                               # serial with the device (inputs, launches, read-back)
      "meta": {...}                            # free-form: device, model, versions, date
    }

The tables hold device time; a step takes its table time plus the phase's host overhead.

Interpolation is multilinear, in 1/SMs along the SM axis (time ~ 1/SMs when compute-bound)
and linear in tokens, batch and KV tokens, extrapolating linearly beyond the grid. A batch
of prefill chunks is the table at its total new tokens, corrected by `attention_pair_ms` for
the attention pairs it really has (chunks with earlier context have more than one fresh
prompt, several short prompts have fewer). Slowdowns interpolate over prefill SMs and decode
SMs respectively, flat beyond the measured splits. A mixed batch (unified baseline) is the
prefill table at (new tokens + decode batch) on all SMs plus the decode step's KV-read share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from semipd.perf.model import (
    PHASES,
    Chunks,
    PerfModel,
    check_chunk,
    check_decode,
    check_phase,
    interp_table,
    kv_capacity,
)

FORMAT = "semipd-profile/1"
_MIN_TIME_S = 1e-6


class ProfilePerfModel(PerfModel):
    """A `PerfModel` interpolating a measured profile (see the module docstring)."""

    def __init__(self, profile: dict[str, Any]) -> None:
        _validate(profile)
        self.profile = profile
        self.name = str(profile["name"])
        self.total_sms = int(profile["total_sms"])
        pre, dec = profile["prefill"], profile["decode"]
        self._pre_axes = (_sm_coord(pre["sms"]), np.asarray(pre["tokens"], float))
        self._pre_ms = np.asarray(pre["time_ms"], float)
        self._pair_ms = float(pre["attention_pair_ms"])
        self._dec_axes = (_sm_coord(dec["sms"]), np.asarray(dec["batch"], float), np.asarray(dec["kv_tokens"], float))
        self._dec_ms = np.asarray(dec["time_ms"], float)
        inter = profile["interference"]
        splits = [(int(p), int(d)) for p, d in inter["splits"]]
        self._pre_slow = _table([p for p, _ in splits], inter["prefill_slowdown"])
        self._dec_slow = _table([d for _, d in splits], inter["decode_slowdown"])
        host = profile.get("host_overhead_ms") or {}
        self._host_s = {phase: float(host.get(phase, 0.0)) / 1e3 for phase in PHASES}

    @classmethod
    def from_file(cls, path: str | Path) -> ProfilePerfModel:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"path: profile not found: {path}")
        try:
            profile = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"path: {path} is not valid JSON: {exc}") from exc
        return cls(profile)

    def __repr__(self) -> str:
        return f"ProfilePerfModel({self.name!r})"

    def prefill_time(self, chunks: Chunks, sms: int) -> float:
        self.check_sms(sms)
        if not chunks:
            return 0.0
        total = sum(check_chunk(n, c) for n, c in chunks)
        pairs = sum(n * (c - n) + n * (n + 1) // 2 for n, c in chunks)
        table_ms = _interp(self._pre_ms, self._pre_axes, (-1.0 / sms, total))
        extra_ms = self._pair_ms * (pairs - total * (total + 1) // 2) * self.total_sms / sms
        return max(_MIN_TIME_S, (table_ms + extra_ms) / 1e3) + self._host_s["prefill"]

    def decode_time(self, batch_size: int, total_kv_tokens: int, sms: int) -> float:
        self.check_sms(sms)
        check_decode(batch_size, total_kv_tokens)
        if batch_size == 0:
            return 0.0
        table_ms = _interp(self._dec_ms, self._dec_axes, (-1.0 / sms, batch_size, total_kv_tokens))
        return max(_MIN_TIME_S, table_ms / 1e3) + self._host_s["decode"]

    def mixed_time(self, chunks: Chunks, batch_size: int, total_kv_tokens: int) -> float:
        check_decode(batch_size, total_kv_tokens)
        full = self.total_sms
        if batch_size == 0:
            return self.prefill_time(chunks, full)
        if not chunks:
            return self.decode_time(batch_size, total_kv_tokens, full)
        linear = self.prefill_time([*chunks, (batch_size, batch_size)], full)
        # The decode part's attention is its KV read, not the causal pairs counted above.
        linear -= self._pair_ms * (batch_size * (batch_size + 1) // 2) / 1e3
        kv_read = self.decode_time(batch_size, total_kv_tokens, full) - self.decode_time(batch_size, 0, full)
        return max(_MIN_TIME_S, linear + max(kv_read, 0.0))

    def interference(self, prefill_sms: int, decode_sms: int) -> tuple[float, float]:
        self.check_sms(prefill_sms)
        self.check_sms(decode_sms)
        return interp_table(self._pre_slow, prefill_sms), interp_table(self._dec_slow, decode_sms)

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        p = self.profile
        return kv_capacity(p["memory_bytes"], gpu_memory_utilization, p["weight_bytes"],
                           p["activation_reserve_bytes"], p["kv_bytes_per_token"])

    def host_overhead_s(self, phase: str) -> float:
        check_phase(phase)
        return self._host_s[phase]


def profile_from_model(
    model: PerfModel,
    *,
    name: str,
    sms: Sequence[int],
    tokens: Sequence[int],
    batch: Sequence[int],
    kv_tokens: Sequence[int],
    splits: Sequence[tuple[int, int]],
    memory: dict[str, int],
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample `model` on the given grids into a profile dict. `memory` holds the profile's
    `memory_bytes`, `weight_bytes`, `activation_reserve_bytes` and `kv_bytes_per_token`. The
    model's host overhead goes to ``host_overhead_ms`` and is taken out of the tables."""
    probe_n, probe_c = 256, 4096
    pair_s = (model.prefill_time([(probe_n, probe_c)], model.total_sms)
              - model.prefill_time([(probe_n, probe_n)], model.total_sms)) / (probe_n * (probe_c - probe_n))
    host = {phase: model.host_overhead_s(phase) for phase in PHASES}
    profile = {
        "format": FORMAT,
        "name": name,
        "total_sms": model.total_sms,
        **{k: int(memory[k]) for k in ("memory_bytes", "weight_bytes", "activation_reserve_bytes",
                                       "kv_bytes_per_token")},
        "prefill": {
            "sms": list(sms), "tokens": list(tokens), "attention_pair_ms": pair_s * 1e3,
            "time_ms": [[(model.prefill_time([(t, t)], s) - host["prefill"]) * 1e3 for t in tokens] for s in sms],
        },
        "decode": {
            "sms": list(sms), "batch": list(batch), "kv_tokens": list(kv_tokens),
            "time_ms": [[[(model.decode_time(b, k, s) - host["decode"]) * 1e3 for k in kv_tokens] for b in batch]
                        for s in sms],
        },
        "interference": {
            "splits": [[p, d] for p, d in splits],
            "prefill_slowdown": [model.interference(p, d)[0] for p, d in splits],
            "decode_slowdown": [model.interference(p, d)[1] for p, d in splits],
        },
        "host_overhead_ms": {phase: seconds * 1e3 for phase, seconds in host.items()},
        "meta": dict(meta or {}),
    }
    _validate(profile)
    return profile


def save_profile(profile: dict[str, Any], path: str | Path) -> None:
    """Validate `profile` and write it as JSON."""
    _validate(profile)
    Path(path).write_text(json.dumps(profile, indent=1) + "\n")


# --------------------------------------------------------------------------- internals


def _validate(p: dict[str, Any]) -> None:
    if not isinstance(p, dict) or p.get("format") != FORMAT:
        raise ValueError(f"format: expected {FORMAT!r}, got {p.get('format') if isinstance(p, dict) else p!r}")
    for key in ("name", "total_sms", "memory_bytes", "weight_bytes", "activation_reserve_bytes",
                "kv_bytes_per_token", "prefill", "decode", "interference"):
        if key not in p:
            raise ValueError(f"{key}: missing from the profile")
    total = p["total_sms"]
    if not isinstance(total, int) or total < 2:
        raise ValueError(f"total_sms must be an int >= 2, got {total!r}")
    for key in ("memory_bytes", "weight_bytes", "kv_bytes_per_token"):
        if not p[key] > 0:
            raise ValueError(f"{key} must be > 0, got {p[key]}")
    pre, dec, inter = p["prefill"], p["decode"], p["interference"]
    _check_axis("prefill.sms", pre["sms"], 1, total)
    _check_axis("prefill.tokens", pre["tokens"], 1, math.inf)
    _check_times("prefill.time_ms", pre["time_ms"], (len(pre["sms"]), len(pre["tokens"])))
    if not pre.get("attention_pair_ms", -1) >= 0:
        raise ValueError("prefill.attention_pair_ms must be >= 0")
    _check_axis("decode.sms", dec["sms"], 1, total)
    _check_axis("decode.batch", dec["batch"], 1, math.inf)
    _check_axis("decode.kv_tokens", dec["kv_tokens"], 0, math.inf)
    _check_times("decode.time_ms", dec["time_ms"], (len(dec["sms"]), len(dec["batch"]), len(dec["kv_tokens"])))
    splits = inter["splits"]
    if not splits or any(len(s) != 2 or not 1 <= s[0] <= total or not 1 <= s[1] <= total for s in splits):
        raise ValueError(f"interference.splits must be [prefill_sms, decode_sms] pairs of 1..{total} SMs")
    for key in ("prefill_slowdown", "decode_slowdown"):
        values = inter[key]
        if len(values) != len(splits) or any(not v >= 1.0 for v in values):
            raise ValueError(f"interference.{key} must hold one slowdown >= 1 per split")
    _table([s[0] for s in splits], inter["prefill_slowdown"])
    _table([s[1] for s in splits], inter["decode_slowdown"])
    host = p.get("host_overhead_ms")
    if host is not None:
        if not isinstance(host, dict) or set(host) - set(PHASES):
            raise ValueError(f"host_overhead_ms must be an object with keys among {list(PHASES)}, got {host!r}")
        for phase, value in host.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise ValueError(f"host_overhead_ms.{phase} must be a finite number >= 0, got {value!r}")


def _check_axis(field: str, values: Sequence[float], lo: float, hi: float) -> None:
    increasing = all(b > a for a, b in zip(values, values[1:], strict=False))
    if not values or not increasing or any(not lo <= v <= hi for v in values):
        raise ValueError(f"{field} must be non-empty, strictly increasing, within [{lo}, {hi}]; got {values}")


def _check_times(field: str, values: Any, shape: tuple[int, ...]) -> None:
    array = np.asarray(values, dtype=float)
    if array.shape != shape:
        raise ValueError(f"{field} must have shape {list(shape)}, got {list(array.shape)}")
    if not np.all(np.isfinite(array)) or np.any(array <= 0):
        raise ValueError(f"{field} must hold finite positive times")


def _table(keys: Sequence[int], values: Sequence[float]) -> tuple[tuple[int, float], ...]:
    """(sms, slowdown) pairs sorted by SMs; repeated SM counts are averaged."""
    grouped: dict[int, list[float]] = {}
    for k, v in zip(keys, values, strict=True):
        grouped.setdefault(int(k), []).append(float(v))
    return tuple((k, sum(vs) / len(vs)) for k, vs in sorted(grouped.items()))


def _sm_coord(sms: Sequence[int]) -> np.ndarray:
    return -1.0 / np.asarray(sms, dtype=float)


def _interp(values: np.ndarray, axes: Sequence[np.ndarray], point: Sequence[float]) -> float:
    """Multilinear interpolation of `values` on the grid `axes` at `point`, extrapolating linearly."""
    result = values
    for axis, x in zip(axes, point, strict=True):
        if axis.size == 1:
            result = result[0]
            continue
        i = int(np.clip(np.searchsorted(axis, x) - 1, 0, axis.size - 2))
        w = (x - axis[i]) / (axis[i + 1] - axis[i])
        result = (1.0 - w) * result[i] + w * result[i + 1]
    return float(result)
