"""Request lifecycle metrics -> sliding-window aggregates; Prometheus exposition; cross-process merge.

Torch-free. `SemiPDMetricsCollector` records each request's lifecycle and answers window
statistics as an `AggregatedMetrics`; `MetricsAggregator` joins a prefill process's and a decode
process's records; `integrate_semi_pd_metrics_with_scheduler` attaches the seed's hooks to a
scheduler; `SemiPDPrometheusExporter` renders the ``semipd:`` Prometheus metrics.
"""

from semipd.metrics.aggregated import AggregatedMetrics
from semipd.metrics.aggregator import MetricsAggregator
from semipd.metrics.collector import SemiPDMetricsCollector
from semipd.metrics.integration import InstanceRole, integrate_semi_pd_metrics_with_scheduler
from semipd.metrics.prometheus import SemiPDPrometheusExporter
from semipd.metrics.request import RequestMetrics, RequestStatus, SystemMetrics

__all__ = [
    "AggregatedMetrics",
    "InstanceRole",
    "MetricsAggregator",
    "RequestMetrics",
    "RequestStatus",
    "SemiPDMetricsCollector",
    "SemiPDPrometheusExporter",
    "SystemMetrics",
    "integrate_semi_pd_metrics_with_scheduler",
]
