"""
Prometheus metrics (promise P10, docs/guarantees.md: label values come from
configuration, never from payloads).

- ``brigade_cr_deliveries_total{format, outcome}``: ``format`` is one of the
  known payload formats (or ``none`` when a delivery was refused before its
  body was read); ``outcome`` is one of ``OUTCOMES``: the four of success
  and the outcomes of the error table (``core/answers.py``).
- ``brigade_cr_builds_total{project, event_type}``: ``project`` is the ID of
  a project that authenticated the delivery (so it exists in Kubernetes);
  ``event_type`` one of the Brigade event types brigade-cr emits.
- ``brigade_cr_spool_*`` (with a spool), read from its ``stats()`` at
  scrape time: gauges ``queued_records``, ``queued_bytes``,
  ``in_flight_records`` (being handed to the store now),
  ``oldest_record_age_seconds`` (0 when nothing is queued) and
  ``accepting``; counters ``handed_over_total{result}`` (``created`` or
  ``duplicate``: the drain rate), ``dead_letters_total`` and
  ``quarantined_total`` (records parked), all since start.

Metrics are served on their own listener (``--metrics``), not on the
webhook port, which may face the internet.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector
from twisted.internet.interfaces import IReactorThreads
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from brigade_cr.core.answers import OUTCOMES
from brigade_cr.core.interfaces import IGatewayMetrics


@attrs.define(eq=False)  # a registry keys its collectors by identity
class _SpoolCollector(Collector):
    stats: Callable[[], Any]

    def collect(self) -> Iterator[Metric]:
        stats = self.stats()
        for name, help_text, value in (
            ("brigade_cr_spool_queued_records", "Deliveries durably queued, not yet built.", stats.queued),
            ("brigade_cr_spool_queued_bytes", "Bytes of the queued records.", stats.queued_bytes),
            ("brigade_cr_spool_in_flight_records", "Queued records being handed to the store now.", stats.in_flight),
            (
                "brigade_cr_spool_oldest_record_age_seconds",
                "Seconds since the oldest queued record was accepted; 0 when none is queued.",
                stats.oldest_age,
            ),
            ("brigade_cr_spool_accepting", "1 when the spool accepts deliveries.", int(stats.accepting)),
        ):
            yield GaugeMetricFamily(name, help_text, value=value)
        for name, help_text, value in (
            (
                "brigade_cr_spool_dead_letters",
                "Records moved to dead-letter/ since start (refused by the store, or failing unexpectedly).",
                stats.dead_lettered,
            ),
            (
                "brigade_cr_spool_quarantined",
                "Damaged records moved to quarantine/ since start.",
                stats.quarantined,
            ),
        ):
            yield CounterMetricFamily(name, help_text, value=value)
        handed_over = CounterMetricFamily(
            "brigade_cr_spool_handed_over",
            "Records handed to the store since start, by what it answered (created or duplicate).",
            labels=["result"],
        )
        handed_over.add_metric(["created"], stats.created)
        handed_over.add_metric(["duplicate"], stats.duplicates)
        yield handed_over


@implementer(IGatewayMetrics)
@attrs.define
class GatewayMetrics:
    """The gateway's counters, in their own registry (no global state)."""

    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    deliveries: Counter = attrs.field(init=False)
    builds: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.deliveries = Counter(
            "brigade_cr_deliveries",
            "Webhook deliveries, by payload format and outcome.",
            ["format", "outcome"],
            registry=self.registry,
        )
        self.builds = Counter(
            "brigade_cr_builds",
            "Builds accepted (created or queued), by project and event type.",
            ["project", "event_type"],
            registry=self.registry,
        )

    def delivered(self, payload_format: str, outcome: str) -> None:
        """Count a delivery; ``outcome`` must be one of ``OUTCOMES``."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self.deliveries.labels(format=payload_format, outcome=outcome).inc()

    def built(self, project_id: str, event_type: str) -> None:
        """Count a build accepted for an authenticated project."""
        self.builds.labels(project=project_id, event_type=event_type).inc()

    def watch_spool(self, stats: Callable[[], Any]) -> None:
        """Export the spool's ``stats()`` as gauges and counters, read at scrape time."""
        self.registry.register(_SpoolCollector(stats))

    def resource(self, reactor: IReactorThreads) -> Any:
        """
        A ``twisted.web`` resource serving the metrics in the text format,
        rendered in ``reactor``'s thread pool (prometheus_client's own
        ``MetricsResource`` takes the global reactor).
        """
        return WSGIResource(reactor, reactor.getThreadPool(), make_wsgi_app(self.registry))


__all__ = ["OUTCOMES", "GatewayMetrics"]
