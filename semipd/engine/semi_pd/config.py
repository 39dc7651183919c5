"""`SemiPDConfig`: the options of ``mode="semi-pd"`` (no torch at import), and their command-line flags.

Controller modes:

- ``"slo"``: the SLO-aware controller moves SMs between the phases every ``monitoring_interval``.
- ``"static"``: the split stays at ``initial_prefill_sm_percent`` (or what ``set_allocation`` picks).
- ``"off"``: no SM partitioning at all; both workers run concurrently over the whole GPU
  (the two-scheduler design without spatial isolation, for comparison).

Predictors. ``--predictor profile`` forecasts with a performance model of the GPU + model:
``--profile FILE`` names a profile written by ``semipd profile``; without it, the built-in
model of the GPU and model in use (an H100 SXM with Llama-3.1-8B) when there is one, else the
``paper`` predictor fitted online, and the log says which. The choice ends up in the
predictor spec (``profile:FILE``, ``profile:llama-3.1-8b-h100`` or ``paper``) that the
engine hands the controller, with the engine's scheduler limits (``max_num_batched_tokens``,
``max_num_seqs``) and whether decode borrows prefill's idle SMs.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, fields
from typing import Any

from semipd.perf.registry import builtin_for, get_perf_model
from semipd.slo.predictors import parse_predictor_spec

logger = logging.getLogger(__name__)

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
    """Controller predictor spec: ``"paper"`` (Eq. 1-4 fitted online), ``"heuristic"`` (the seed's),
    ``"profile:FILE"`` (a profile from ``semipd profile``) or ``"profile:llama-3.1-8b-h100"`` (a
    built-in performance model); see `resolve_predictor` for what ``--predictor profile`` picks."""
    reachable_prefill_sms: tuple[int, ...] | None = None
    """Prefill SM counts the engine pre-creates (and captures decode graphs for); None: every
    split of the grid between ``min_prefill_percent`` and ``max_prefill_percent``."""
    min_prefill_percent: float = 0.0
    """Smallest prefill share the controller may choose (percent); decode keeps the rest. The
    default, 0, leaves the grid's own limit: on an H100, 16 SMs a side."""
    max_prefill_percent: float = 100.0
    """Largest prefill share the controller may choose (percent), for operators who want a cap.
    The default, 100, reaches every split the grid has: on an H100 up to 116 prefill SMs with
    decode on 16 (which still borrows prefill's SMs while prefill is idle)."""
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
        if not _number(self.initial_prefill_sm_percent) or not 0 < self.initial_prefill_sm_percent < 100:
            raise ValueError(f"initial_prefill_sm_percent must be a number in (0, 100), "
                             f"got {self.initial_prefill_sm_percent!r}")
        for name in ("min_prefill_percent", "max_prefill_percent"):
            value = getattr(self, name)
            if not _number(value) or not 0 <= value <= 100:
                raise ValueError(f"{name} must be a number in [0, 100], got {value!r}")
        if self.min_prefill_percent > self.max_prefill_percent:
            raise ValueError(f"min_prefill_percent must be <= max_prefill_percent, got {self.min_prefill_percent} "
                             f"> {self.max_prefill_percent}")
        name, argument = parse_predictor_spec(self.predictor)
        if name == "profile" and argument is None:
            raise ValueError("predictor 'profile' needs a profile: 'profile:FILE' (from semipd profile) or "
                             "'profile:llama-3.1-8b-h100'; on the command line, --predictor profile picks one")
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
    g.add_argument("--predictor", default=d.predictor,
                   help="controller predictor: paper (fitted online), heuristic (the seed's) or profile (a "
                        "performance profile: --profile FILE, else the built-in one of this GPU and model, "
                        "else paper)")
    g.add_argument("--profile", metavar="FILE", default=None,
                   help="profile JSON from `semipd profile` for --predictor profile")
    g.add_argument("--reachable-prefill-sms", type=lambda s: tuple(int(x) for x in s.split(",")), default=None,
                   help="comma-separated prefill SM counts to pre-create (default: the controller's range)")
    g.add_argument("--min-prefill-percent", type=float, default=d.min_prefill_percent,
                   help="smallest prefill share the controller may choose, percent (default: the grid's limit)")
    g.add_argument("--max-prefill-percent", type=float, default=d.max_prefill_percent,
                   help="largest prefill share the controller may choose, percent, to cap it (default: no cap "
                        "beyond the grid's: on an H100, 116 of 132 SMs)")
    g.add_argument("--no-decode-borrow", dest="decode_borrows_idle_prefill", action="store_false", default=None,
                   help="keep decode on its own SMs even while prefill is idle")
    g.add_argument("--max-graph-partitions", type=int, default=d.max_graph_partitions,
                   help="most partitions that get decode CUDA graphs")


def semipd_config_from_args(args: argparse.Namespace) -> SemiPDConfig:
    """A `SemiPDConfig` from parsed `add_semipd_arguments` options (missing ones keep defaults);
    ``--predictor``/``--profile`` become a predictor spec (`resolve_predictor`, which reads the
    engine's ``--model`` and ``--device``)."""
    names = {f.name for f in fields(SemiPDConfig)}
    kwargs: dict[str, Any] = {n: v for n, v in vars(args).items() if n in names and v is not None}
    if "predictor" in kwargs or getattr(args, "profile", None) is not None:
        kwargs["predictor"] = resolve_predictor(kwargs.get("predictor", SemiPDConfig.predictor),
                                                getattr(args, "profile", None), getattr(args, "model", None),
                                                getattr(args, "device", None))
    return SemiPDConfig(**kwargs)


def resolve_predictor(predictor: str, profile: str | None, model: str | None, device: str | None) -> str:
    """The predictor spec for ``--predictor PREDICTOR [--profile FILE]`` with `model` on `device`:

    - ``profile`` with a profile FILE: ``profile:FILE`` (the file is read now, so a bad one fails at start);
    - ``profile`` alone: ``profile:NAME`` for the built-in model of this GPU and model, else ``paper``
      (logged: this GPU and model have no profile, so the paper predictor is fitted online instead);
    - anything else: unchanged (a profile FILE with another predictor is an error).
    """
    name, argument = parse_predictor_spec(predictor)
    if profile is not None:
        if name != "profile" or argument is not None:
            raise ValueError(f"profile: --profile goes with --predictor profile, got --predictor {predictor}")
        get_perf_model(profile)
        logger.info("SLO controller: predictor profile from %s", profile)
        return f"profile:{profile}"
    if name != "profile" or argument is not None:
        return predictor
    gpu = _gpu(device)
    builtin = None if gpu is None or model is None else builtin_for(gpu[0], gpu[1], model)
    if builtin is None:
        where = "no CUDA device" if gpu is None else f"{gpu[0]} ({gpu[1]} SMs)"
        logger.warning("SLO controller: no performance profile for %s on %s (run `semipd profile` and pass "
                       "--profile FILE); using the paper predictor, fitted online", model, where)
        return "paper"
    logger.info("SLO controller: predictor profile from the built-in %s", builtin)
    return f"profile:{builtin}"


def _gpu(device: str | None) -> tuple[str, int] | None:
    """(name, SM count) of the CUDA device `device` names ("auto"/None: the current one), or None
    when it is the CPU or CUDA is not there."""
    if device == "cpu":
        return None
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    index = int(device.split(":", 1)[1]) if device and device.startswith("cuda:") else torch.cuda.current_device()
    return torch.cuda.get_device_name(index), torch.cuda.get_device_properties(index).multi_processor_count
