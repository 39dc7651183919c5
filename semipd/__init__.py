"""semipd: LLM serving with prefill and decode on disjoint SM partitions (Semi-PD).

The seed's public names are importable from here, e.g.
``from semipd import SemiPDMetricsCollector, SLOAwareResourceController``.
They are resolved lazily so that importing `semipd` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "SMAllocation": "semipd.allocation",
    "SMGrid": "semipd.allocation",
    "ResourceManager": "semipd.allocation",
    "InMemoryResourceManager": "semipd.allocation",
    "RealClock": "semipd.clock",
    "VirtualClock": "semipd.clock",
    "SemiPDMetricsCollector": "semipd.metrics",
    "RequestMetrics": "semipd.metrics",
    "SystemMetrics": "semipd.metrics",
    "AggregatedMetrics": "semipd.metrics",
    "MetricsAggregator": "semipd.metrics",
    "InstanceRole": "semipd.metrics",
    "SemiPDPrometheusExporter": "semipd.metrics",
    "integrate_semi_pd_metrics_with_scheduler": "semipd.metrics",
    "SLOConstraints": "semipd.slo",
    "SLOAwareResourceController": "semipd.slo",
    "ResourceAllocationCandidate": "semipd.slo",
    "LLM": "semipd.engine",
    "SamplingParams": "semipd.engine",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'semipd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
