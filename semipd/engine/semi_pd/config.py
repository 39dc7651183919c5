"""`SemiPDConfig`: the options of ``mode="semi-pd"`` (no torch here), and their command-line flags.

Controller modes:

- ``"slo"``: the SLO-aware controller moves SMs between the phases every ``monitoring_interval``.
- ``"static"``: the split stays at ``initial_prefill_sm_percent`` (or what ``set_allocation`` picks).
- ``"off"``: no SM partitioning at all; both workers run concurrently over the whole GPU
  (the two-scheduler design without spatial isolation, for comparison).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

CONTROLLERS = ("slo", "static", "off")


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SemiPDConfig:
    """Semi-PD execution options. Invalid values raise ValueError naming the field."""

    controller: str = "slo"
    """``"slo"``, ``"static"`` or ``"off"`` (see the module docstring)."""
    slo_ttft_ms: float = 200.0
    """TTFT target of the SLO controller, milliseconds."""
    slo_tpot_ms: float = 30.0
    """TPOT target of the SLO controller, milliseconds."""
    initial_prefill_sm_percent: float = 50.0
    """Prefill's share of the SMs at start, in percent of the device; the nearest realisable
    split is used (on an H100: multiples of 8 of its 132 SMs)."""
    monitoring_interval: float = 5.0
    """Seconds between two controller cycles."""
    cooldown_seconds: float = 10.0
    """Seconds the controller waits after a move before judging the new split."""
    predictor: str = "paper"
    """Controller predictor: ``"paper"`` (Eq. 1-4 fitted online), ``"heuristic"`` (the seed's), ..."""
    reachable_prefill_sms: tuple[int, ...] | None = None
    """Prefill SM counts the engine pre-creates (and captures decode graphs for); None: every
    split of the grid between ``min_prefill_percent`` and ``max_prefill_percent``."""
    min_prefill_percent: float = 20.0
    """Smallest prefill share the controller may choose (percent); decode keeps the rest."""
    max_prefill_percent: float = 80.0
    """Largest prefill share the controller may choose (percent)."""
    max_graph_partitions: int = 16
    """Bound on the partitions that get a decode CUDA-graph set (graphs x partitions cost
    capture time and memory); more reachable partitions than this is a configuration error."""
    gil_switch_interval_s: float | None = 0.0002
    """``sys.setswitchinterval`` while the workers run (restored at stop): a prefill thread busy
    launching kernels holds the GIL up to this long before the decode thread gets it. On an H100
    (64 prefill SMs, batch-64 decode steps beside 2048-token prefill iterations) the decode step's
    mean went from 22.0 ms at Python's default 5 ms to 18.7 ms at 0.2 ms (p90 53 -> 33 ms). None: leave it."""
    decode_borrows_idle_prefill: bool = True
    """While the prefill worker has nothing to do, run decode steps on the whole GPU (a graph
    set captured on a whole-device stream) instead of leaving prefill's SMs idle. When prefill
    work arrives it starts at once on its own SMs; decode is back on its partition from its
    next step, so the two overlap for at most one decode step. Needs green contexts."""
    prefill_launch_lookahead_layers: int = 2
    """Decoder layers the prefill worker may queue ahead of the GPU. It checks for a switch at
    every layer boundary, so after a switch at most this many layers (plus the one being
    launched) still run on prefill's old SMs; more only helps when the host cannot launch a
    layer in the time the GPU runs one."""
    output_wait_s: float = 0.01
    """How long ``step()`` waits for the workers' outputs when none are ready."""

    def __post_init__(self) -> None:
        if self.controller not in CONTROLLERS:
            raise ValueError(f"controller must be one of {list(CONTROLLERS)}, got {self.controller!r}")
        for name in ("slo_ttft_ms", "slo_tpot_ms", "monitoring_interval", "output_wait_s"):
            value = getattr(self, name)
            if not _number(value) or not value > 0:
                raise ValueError(f"{name} must be a number > 0, got {value!r}")
        if not _number(self.cooldown_seconds) or self.cooldown_seconds < 0:
            raise ValueError(f"cooldown_seconds must be a number >= 0, got {self.cooldown_seconds!r}")
        for name in ("initial_prefill_sm_percent", "min_prefill_percent", "max_prefill_percent"):
            value = getattr(self, name)
            if not _number(value) or not 0 < value < 100:
                raise ValueError(f"{name} must be a number in (0, 100), got {value!r}")
        if self.min_prefill_percent > self.max_prefill_percent:
            raise ValueError(f"min_prefill_percent must be <= max_prefill_percent, got {self.min_prefill_percent} "
                             f"> {self.max_prefill_percent}")
        if not isinstance(self.predictor, str) or not self.predictor:
            raise ValueError(f"predictor must be a non-empty string, got {self.predictor!r}")
        if self.reachable_prefill_sms is not None:
            sms = self.reachable_prefill_sms
            if not isinstance(sms, tuple) or not sms or not all(
                    isinstance(p, int) and not isinstance(p, bool) and p > 0 for p in sms):
                raise ValueError(f"reachable_prefill_sms must be None or a non-empty tuple of ints > 0, got {sms!r}")
        if isinstance(self.max_graph_partitions, bool) or not isinstance(self.max_graph_partitions, int) \
                or self.max_graph_partitions < 1:
            raise ValueError(f"max_graph_partitions must be an int >= 1, got {self.max_graph_partitions!r}")
        if not isinstance(self.decode_borrows_idle_prefill, bool):
            raise ValueError(f"decode_borrows_idle_prefill must be a bool, got {self.decode_borrows_idle_prefill!r}")
        lookahead = self.prefill_launch_lookahead_layers
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 1:
            raise ValueError(f"prefill_launch_lookahead_layers must be an int >= 1, got {lookahead!r}")
        interval = self.gil_switch_interval_s
        if interval is not None and (not _number(interval) or not 0 < interval <= 1):
            raise ValueError(f"gil_switch_interval_s must be None or in (0, 1], got {interval!r}")


def add_semipd_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--mode semi-pd`` options (shared by ``semipd generate`` and ``semipd serve``)."""
    d = SemiPDConfig()
    g = parser.add_argument_group("semi-pd (with --mode semi-pd)")
    g.add_argument("--controller", choices=list(CONTROLLERS), default=d.controller,
                   help="slo: SLO-aware SM reallocation; static: fixed split; off: no SM partitions")
    g.add_argument("--slo-ttft-ms", type=float, default=d.slo_ttft_ms, help="TTFT target (ms)")
    g.add_argument("--slo-tpot-ms", type=float, default=d.slo_tpot_ms, help="TPOT target (ms)")
    g.add_argument("--initial-prefill-sm-percent", type=float, default=d.initial_prefill_sm_percent,
                   help="prefill's share of the SMs at start, percent (nearest realisable split)")
    g.add_argument("--monitoring-interval", type=float, default=d.monitoring_interval,
                   help="seconds between controller cycles")
    g.add_argument("--predictor", default=d.predictor, help="controller predictor (paper, heuristic, ...)")
    g.add_argument("--reachable-prefill-sms", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="comma-separated prefill SM counts to pre-create (default: the controller's range)")
    g.add_argument("--no-decode-borrow", dest="decode_borrows_idle_prefill", action="store_false", default=None,
                   help="keep decode on its own SMs even while prefill is idle")
    g.add_argument("--max-graph-partitions", type=int, default=d.max_graph_partitions,
                   help="most partitions that get decode CUDA graphs")


def semipd_config_from_args(args: argparse.Namespace) -> SemiPDConfig:
    """A `SemiPDConfig` from parsed `add_semipd_arguments` options (missing ones keep defaults)."""
    names = {f.name for f in fields(SemiPDConfig)}
    kwargs: dict[str, Any] = {n: v for n, v in vars(args).items() if n in names and v is not None}
    return SemiPDConfig(**kwargs)
