"""Prometheus metrics of the pager, in an injected registry (the worker's own when it runs inside a worker,
its own registry behind ``rollguard pager``'s /metrics otherwise).

>>> from prometheus_client import CollectorRegistry, generate_latest
>>> m = PagerMetrics(CollectorRegistry(), "alertmanager")
>>> m.delivered.labels("alertmanager", "trigger").inc()
>>> b'rollguard_pager_delivered_total{event_action="trigger",target="alertmanager"} 1.0' in generate_latest(m.registry)
True
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

__all__ = ["PagerMetrics"]

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class PagerMetrics:
    """The counters are created with every label value they can take, so a dashboard sees zeros, not gaps."""

    def __init__(self, registry: CollectorRegistry, target: str) -> None:
        self.registry = registry
        self.delivered = Counter("rollguard_pager_delivered", "pages the receiver took (2xx)",
                                 ["target", "event_action"], registry=registry)  # fmt: skip
        self.failed = Counter("rollguard_pager_failed", "pages the receiver refused for good (4xx other than 408 "
                              "and 429): counted, skipped, offset committed", ["target"], registry=registry)
        self.retried = Counter("rollguard_pager_retried", "delivery attempts that failed in a retryable way (no "
                               "answer, timeout, 408, 429, 5xx) and were retried after a backoff", ["target"],
                               registry=registry)  # fmt: skip
        self.invalid = Counter("rollguard_pager_invalid", "records on the pages topic that are not pages: skipped",
                               registry=registry)  # fmt: skip
        self.latency = Histogram("rollguard_pager_delivery_latency_seconds", "from the page's append to the pages "
                                 "topic to its delivery", ["target"], buckets=_LATENCY_BUCKETS, registry=registry)
        for action in ("trigger", "resolve"):
            self.delivered.labels(target, action)
        self.failed.labels(target)
        self.retried.labels(target)
        self.latency.labels(target)
