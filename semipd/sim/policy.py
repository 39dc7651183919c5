"""Policies the simulator compares: how the GPU is shared between prefill and decode.

- ``unified``: the vLLM/SGLang baseline, mixed chunked-prefill batches on the whole GPU;
- ``static:P/D``: Semi-PD with a fixed split, prefill P% and decode D% of the SMs (snapped
  to the resource manager's grid, e.g. ``static:70/30`` -> 96/36 SMs on a 132-SM H100);
- ``slo:<predictor>``: Semi-PD steered by the SLO-aware controller with that predictor
  (``heuristic``, ``paper``, ``profile``).
"""

from __future__ import annotations

from dataclasses import dataclass

from semipd.allocation import SMAllocation

KINDS = ("unified", "static", "slo")


@dataclass(frozen=True)
class Policy:
    """A parsed policy spec."""

    kind: str
    """"unified", "static" or "slo"."""
    allocation: SMAllocation | None = None
    """The split asked for by ``static:P/D`` (before snapping to the grid)."""
    predictor: str | None = None
    """The predictor of ``slo:<predictor>``."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "static") != (self.allocation is not None):
            raise ValueError("allocation must be given for a static policy, and only for it")
        if (self.kind == "slo") != bool(self.predictor):
            raise ValueError("predictor must be given for an slo policy, and only for it")

    @property
    def is_semipd(self) -> bool:
        return self.kind != "unified"

    def __str__(self) -> str:
        if self.kind == "static":
            assert self.allocation is not None
            return f"static:{self.allocation}"
        if self.kind == "slo":
            return f"slo:{self.predictor}"
        return "unified"


def parse_policy(spec: str) -> Policy:
    """``"unified"``, ``"static:70/30"``, ``"slo:heuristic"``, ... -> `Policy`; ValueError otherwise."""
    from semipd.slo.predictors import available_predictors

    text = spec.strip().lower()
    kind, _, arg = text.partition(":")
    if kind == "unified" and not arg:
        return Policy("unified")
    if kind == "static":
        p, sep, d = arg.partition("/")
        try:
            alloc = SMAllocation(float(p), float(d) if sep else 100.0 - float(p))
        except ValueError as exc:
            raise ValueError(f"policy {spec!r}: static needs P/D percentages, e.g. static:70/30 ({exc})") from None
        return Policy("static", allocation=alloc)
    if kind == "slo":
        known = available_predictors()
        if arg not in known:
            raise ValueError(f"policy {spec!r}: unknown predictor {arg!r}; known: {', '.join(known)}")
        return Policy("slo", predictor=arg)
    raise ValueError(f"unknown policy {spec!r}; expected unified, static:P/D (e.g. static:70/30) or "
                     f"slo:<predictor> (e.g. slo:heuristic)")
