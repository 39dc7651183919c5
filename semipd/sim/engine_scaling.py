"""The engine's own iteration times: `EngineScaledPerfModel` rescales a `PerfModel` to them.

The built-in roofline (`semipd.perf.analytical`) was fitted to the bare linear layers. The
engine runs slower than that fit at most SM counts (attention, norms, sampling, launches), and
its prefill slows far more beside decode than the bare layers do (launches and the GIL are
shared too). `ENGINE_SM_SCALING` holds, per perf model, what the engine measured:

- iteration times at reference shapes over SM counts (a 2048-token prefill; a decode step of
  batch 64 at context 1024), each phase alone: the rescaled model multiplies the base model's
  time by engine / base at the iteration's SMs;
- the slowdown of each phase while the other runs beside it, which replaces the base model's;
- the bare linear layers' times at 512, 2048 and 8192 tokens over SM counts: the smooth roofline
  misses GEMM tiling (a 2048-token prefill fills few tiles on many SMs, an 8192-token one is
  relatively faster), so a prefill's factor is corrected by measured / fitted at its token count,
  relative to 2048 tokens (only for a base model with ``linear_time``, i.e. the roofline).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from semipd.perf.model import Chunks, PerfModel

Table = tuple[tuple[int, float], ...]


def _check_table(name: str, table: Table) -> None:
    sms = [s for s, _ in table]
    if not table or sms != sorted(set(sms)) or any(not v > 0 for _, v in table):
        raise ValueError(f"{name} must be (sms, value > 0) pairs with increasing sms")


@dataclass(frozen=True)
class EngineScaling:
    """Measured engine figures for one GPU + model (see the module docstring). Times in ms."""

    prefill_tokens: int
    """Tokens of the reference prefill (one fresh prompt)."""
    decode_batch: int
    decode_context: int
    """The reference decode step: `decode_batch` sequences of `decode_context` tokens each."""
    prefill_ms: Table
    """(SMs, reference prefill time alone)."""
    decode_ms: Table
    """(SMs, reference decode step time alone)."""
    prefill_slowdown: Table
    """(prefill SMs, prefill time with decode beside it / alone)."""
    decode_slowdown: Table
    """(decode SMs, decode time with prefill beside it / alone)."""
    linear_tokens: tuple[int, ...]
    """Token counts of `linear_ms` (increasing, holding `prefill_tokens`)."""
    linear_ms: tuple[tuple[int, tuple[float, ...]], ...]
    """(SMs, the bare linear layers' time at each of `linear_tokens`)."""
    source: str

    def __post_init__(self) -> None:
        for name in ("prefill_ms", "decode_ms", "prefill_slowdown", "decode_slowdown"):
            _check_table(name, getattr(self, name))
        for name in ("prefill_slowdown", "decode_slowdown"):
            if any(f < 1.0 for _, f in getattr(self, name)):
                raise ValueError(f"{name} must hold slowdowns >= 1")
        toks = self.linear_tokens
        if list(toks) != sorted(set(toks)) or self.prefill_tokens not in toks:
            raise ValueError(f"linear_tokens must be increasing and hold prefill_tokens, got {toks}")
        _check_table("linear_ms", tuple((s, min(ms)) for s, ms in self.linear_ms))
        if any(len(ms) != len(toks) for _, ms in self.linear_ms):
            raise ValueError("linear_ms must hold one time per linear_tokens entry")


ENGINE_SM_SCALING: dict[str, EngineScaling] = {
    "llama-3.1-8b-h100": EngineScaling(
        prefill_tokens=2048, decode_batch=64, decode_context=1024,
        # benchmarks/results/semipd_h100.json check.sm_scaling, check.unified_row (132 SMs)
        prefill_ms=((16, 293.7), (24, 204.7), (32, 155.3), (40, 131.6), (48, 106.4), (56, 99.1), (64, 86.8),
                    (72, 74.7), (80, 72.3), (88, 69.4), (96, 68.0), (104, 67.0), (112, 66.1), (132, 51.3)),
        decode_ms=((20, 22.45), (28, 17.32), (36, 14.95), (44, 13.23), (52, 12.20), (60, 11.91), (68, 11.19),
                   (76, 11.07), (84, 11.32), (92, 11.51), (100, 11.41), (108, 11.08), (116, 11.10), (132, 10.43)),
        # semipd_h100.json isolation: prefill_together_ms / prefill alone, and decode slowdown_mean
        prefill_slowdown=((16, 1.719), (32, 1.635), (48, 1.589), (64, 1.471), (80, 1.344), (96, 1.193),
                          (112, 1.089)),
        decode_slowdown=((20, 1.325), (36, 1.335), (52, 1.331), (68, 1.262), (84, 1.263), (100, 1.251),
                         (116, 1.103)),
        # gpu-facts/llama8b_sm_scaling.json "alone" (green contexts; 132 = the whole device)
        linear_tokens=(512, 2048, 8192),
        linear_ms=((16, (62.894, 249.495, 988.078)), (32, (33.007, 132.213, 499.397)),
                   (48, (22.653, 90.031, 334.054)), (64, (18.111, 73.776, 268.055)),
                   (80, (16.56, 64.766, 235.198)), (96, (15.987, 60.264, 211.349)),
                   (112, (15.794, 56.568, 194.57)), (132, (10.762, 44.592, 168.573))),
        source="benchmarks/results/semipd_h100.json (check.sm_scaling, check.unified_row, isolation) and "
               "gpu-facts/llama8b_sm_scaling.json; H100 80GB HBM3, 2026-11-24",
    ),
}
"""Per perf-model name: the engine's measured figures (docs/PERFORMANCE.md, "Semi-PD execution")."""


class EngineScaledPerfModel(PerfModel):
    """`base` rescaled to `scaling` (see the module docstring). A mixed (unified) batch takes the
    whole-GPU factors, weighted by its prefill and decode tokens."""

    def __init__(self, base: PerfModel, scaling: EngineScaling) -> None:
        self.base = base
        self.scaling = scaling
        self.name = base.name
        self.total_sms = base.total_sms
        sc, full = scaling, base.total_sms
        ref = sc.prefill_tokens
        self._prefill = _ratios(sc.prefill_ms, lambda s: base.prefill_time([(ref, ref)], min(s, full)))
        kv = sc.decode_batch * sc.decode_context
        self._decode = _ratios(sc.decode_ms, lambda s: base.decode_time(sc.decode_batch, kv, min(s, full)))
        self._prefill_slow = _arrays(sc.prefill_slowdown)
        self._decode_slow = _arrays(sc.decode_slowdown)
        self._tiling = _tiling_correction(base, sc)

    def __repr__(self) -> str:
        return f"EngineScaledPerfModel({self.base!r})"

    def prefill_factor(self, sms: int, tokens: int) -> float:
        """Engine / base for a prefill of `tokens` new tokens on `sms` SMs."""
        factor = _interp(self._prefill, sms)
        if self._tiling is not None:
            sm_axis, log_tokens, grid = self._tiling
            x = float(np.clip(np.log(max(tokens, 1)), log_tokens[0], log_tokens[-1]))
            column = np.array([np.interp(x, log_tokens, row) for row in grid])
            factor *= float(np.interp(sms, sm_axis, column))
        return factor

    def decode_factor(self, sms: int) -> float:
        """Engine / base for a decode step on `sms` SMs."""
        return _interp(self._decode, sms)

    def prefill_time(self, chunks: Chunks, sms: int) -> float:
        return self.base.prefill_time(chunks, sms) * self.prefill_factor(sms, sum(n for n, _ in chunks))

    def decode_time(self, batch_size: int, total_kv_tokens: int, sms: int) -> float:
        return self.base.decode_time(batch_size, total_kv_tokens, sms) * self.decode_factor(sms)

    def host_overhead_s(self, phase: str) -> float:
        return self.base.host_overhead_s(phase)

    def mixed_time(self, chunks: Chunks, batch_size: int, total_kv_tokens: int) -> float:
        new_tokens = sum(n for n, _ in chunks)
        share = new_tokens / (new_tokens + batch_size) if new_tokens + batch_size else 0.0
        full = self.total_sms
        factor = share * self.prefill_factor(full, new_tokens + batch_size) + (1.0 - share) * self.decode_factor(full)
        return self.base.mixed_time(chunks, batch_size, total_kv_tokens) * factor

    def interference(self, prefill_sms: int, decode_sms: int) -> tuple[float, float]:
        self.base.interference(prefill_sms, decode_sms)  # validates the SM counts
        return (max(1.0, _interp(self._prefill_slow, prefill_sms)), max(1.0, _interp(self._decode_slow, decode_sms)))

    def kv_capacity_tokens(self, gpu_memory_utilization: float = 0.9) -> int:
        return self.base.kv_capacity_tokens(gpu_memory_utilization)


def engine_scaled(perf: PerfModel) -> PerfModel:
    """`perf` rescaled to its engine figures when `ENGINE_SM_SCALING` has them, else `perf`."""
    if isinstance(perf, EngineScaledPerfModel):
        return perf
    scaling = ENGINE_SM_SCALING.get(perf.name)
    return perf if scaling is None else EngineScaledPerfModel(perf, scaling)


def _tiling_correction(base: PerfModel, sc: EngineScaling) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(SM axis, log token axis, grid) of (measured / fitted linear time), relative to the reference
    token count at the same SMs; None when `base` has no ``linear_time`` to compare with."""
    linear_time = getattr(base, "linear_time", None)
    if linear_time is None:
        return None
    ref = sc.linear_tokens.index(sc.prefill_tokens)
    rows = []
    for sms, times in sc.linear_ms:
        s = min(sms, base.total_sms)
        ratio = [ms / 1e3 / linear_time(tokens, s) for tokens, ms in zip(sc.linear_tokens, times, strict=True)]
        rows.append([r / ratio[ref] for r in ratio])
    sm_axis = np.array([s for s, _ in sc.linear_ms], dtype=float)
    return sm_axis, np.log(np.array(sc.linear_tokens, dtype=float)), np.array(rows)


def _ratios(table: Table, model_s: Callable[[int], float]) -> tuple[np.ndarray, np.ndarray]:
    """(SMs, measured / model) of a table of measured milliseconds."""
    return (np.array([s for s, _ in table], dtype=float),
            np.array([ms / 1e3 / model_s(s) for s, ms in table], dtype=float))


def _arrays(table: Sequence[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([s for s, _ in table], dtype=float), np.array([v for _, v in table], dtype=float)


def _interp(table: tuple[np.ndarray, np.ndarray], sms: int) -> float:
    return float(np.interp(sms, table[0], table[1]))
