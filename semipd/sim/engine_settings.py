"""`EngineSettings`: a real engine's configuration, as the simulator needs it to replay a run.

Read from the engine's status (``GET /semipd/status``, which ``semipd bench`` records with its
results), overridden field by field (the ``semipd simulate`` flags that mirror ``semipd serve``'s),
and turned into a simulator policy plus `SimConfig`. Fields left None keep the engine's defaults
(``EngineConfig`` and ``SemiPDConfig``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from semipd.sim.engine_costs import EngineCosts
from semipd.sim.runner import SimConfig
from semipd.slo.constraints import SLOConstraints

MODES = ("unified", "semi-pd")
CONTROLLERS = ("slo", "static", "off")


@dataclass(frozen=True)
class EngineSettings:
    """What the engine ran with; None: unknown (the engine's default applies)."""

    mode: str | None = None
    """``unified`` or ``semi-pd``."""
    controller: str | None = None
    """Semi-PD controller: ``slo``, ``static`` or ``off`` (off has no simulated counterpart)."""
    prefill_percent: float | None = None
    """Semi-PD prefill share of the SMs at the start, percent."""
    predictor: str | None = None
    monitoring_interval: float | None = None
    cooldown_seconds: float | None = None
    min_prefill_percent: float | None = None
    max_prefill_percent: float | None = None
    slo_ttft_ms: float | None = None
    slo_tpot_ms: float | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    num_kv_blocks: int | None = None
    block_size: int | None = None
    sm_granularity: int | None = None
    min_sms: int | None = None
    decode_borrow: bool | None = None
    """Semi-PD decode steps on every SM while prefill is idle (the engine's default: on)."""

    def __post_init__(self) -> None:
        if self.mode is not None and self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.controller is not None and self.controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {CONTROLLERS}, got {self.controller!r}")

    def merged(self, overrides: EngineSettings) -> EngineSettings:
        """These settings with every field `overrides` sets replaced."""
        return replace(self, **{f.name: getattr(overrides, f.name) for f in fields(overrides)
                                if getattr(overrides, f.name) is not None})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def policy(self) -> str:
        """The simulator policy: ``unified``, ``static:P/D`` or ``slo:<predictor>``."""
        if (self.mode or "unified") == "unified":
            return "unified"
        controller = self.controller or "slo"
        if controller == "off":
            raise ValueError("controller 'off' (semi-pd without SM partitions) has no simulated counterpart; "
                             "pass --controller static or slo")
        if controller == "static":
            p = self.prefill_percent if self.prefill_percent is not None else 50.0
            return f"static:{p:g}/{100.0 - p:g}"
        return f"slo:{self.predictor or 'paper'}"

    def sim_config(self, costs: EngineCosts, **base: Any) -> SimConfig:
        """A `SimConfig` for these settings and `costs`; `base` holds further `SimConfig` fields
        (perf model, metrics window, seed) that the engine's status does not give."""
        kw: dict[str, Any] = dict(base)
        pairs = {"max_num_batched_tokens": "max_prefill_tokens", "max_num_seqs": "max_decode_batch",
                 "num_kv_blocks": "num_kv_blocks", "block_size": "block_size", "monitoring_interval":
                 "monitoring_interval", "cooldown_seconds": "cooldown_seconds", "sm_granularity": "sm_granularity",
                 "min_sms": "min_sms", "min_prefill_percent": "min_prefill_percentage",
                 "max_prefill_percent": "max_prefill_percentage", "prefill_percent": "initial_prefill_percentage"}
        for ours, theirs in pairs.items():
            if getattr(self, ours) is not None:
                kw[theirs] = getattr(self, ours)
        if self.slo_ttft_ms is not None or self.slo_tpot_ms is not None:
            slo = base.get("slo", SLOConstraints())
            kw["slo"] = replace(slo, **{k: v for k, v in (("ttft_target_ms", self.slo_ttft_ms),
                                                          ("tpot_target_ms", self.slo_tpot_ms)) if v is not None})
        kw["decode_borrows_idle_prefill"] = self.decode_borrow if self.decode_borrow is not None else True
        return SimConfig(costs=costs, **kw)


def settings_from_status(status: dict[str, Any] | None) -> EngineSettings:
    """The settings an engine status (``GET /semipd/status``) reveals; empty for None or a foreign dict."""
    if not isinstance(status, dict):
        return EngineSettings()
    mode = status.get("mode") if status.get("mode") in MODES else None
    kv = _dict(status.get("kv_cache"))
    out: dict[str, Any] = {
        "mode": mode,
        "max_num_batched_tokens": _int(status.get("max_num_batched_tokens")),
        "max_num_seqs": _int(status.get("max_num_seqs")),
        "num_kv_blocks": _int(kv.get("num_blocks")),
        "block_size": _int(kv.get("block_size")),
    }
    if mode == "semi-pd":
        ctl = _dict(status.get("controller"))
        parts = _dict(status.get("partitions"))
        grid = _dict(parts.get("sm_grid"))
        slo = _dict(ctl.get("slo_constraints"))
        total = _int(grid.get("total_sms"))
        reachable = [s for s in parts.get("reachable_prefill_sms") or [] if _int(s)]
        alloc = _dict(status.get("allocation"))
        out.update(
            controller=ctl.get("mode") if ctl.get("mode") in CONTROLLERS else None,
            prefill_percent=_float(alloc.get("prefill_percentage")),
            predictor=_dict(ctl.get("predictor")).get("name") or None,
            monitoring_interval=_float(ctl.get("monitoring_interval")),
            cooldown_seconds=_float(ctl.get("cooldown_seconds")),
            slo_ttft_ms=_float(slo.get("ttft_target_ms")),
            slo_tpot_ms=_float(slo.get("tpot_target_ms")),
            sm_granularity=_int(grid.get("granularity")),
            min_sms=_int(grid.get("min_sms")),
        )
        if total and reachable:
            out.update(min_prefill_percent=100.0 * min(reachable) / total,
                       max_prefill_percent=100.0 * max(reachable) / total)
        graph_sets = _int(_dict(status.get("cuda_graphs")).get("partitions"))
        if graph_sets is not None and reachable:
            out["decode_borrow"] = graph_sets > len(reachable)  # the whole-device set is captured for borrowing
    return EngineSettings(**out)


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
