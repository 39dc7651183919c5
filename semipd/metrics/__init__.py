"""Request lifecycle metrics -> sliding-window aggregates (torch-free).

`SemiPDMetricsCollector` records each request's lifecycle and answers window statistics as an
`AggregatedMetrics`.
"""

from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.metrics.request import RequestMetrics, RequestStatus, SystemMetrics

__all__ = [
    "AggregatedMetrics",
    "RequestMetrics",
    "RequestStatus",
    "SemiPDMetricsCollector",
    "SystemMetrics",
]
