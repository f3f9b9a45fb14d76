"""
Prometheus metrics (promise P10, docs/guarantees.md: label values come from
configuration or from fixed sets, never from payloads), in the gateway's own
registry (no global state). Names follow Prometheus's conventions: base
units (seconds, bytes), ``_total`` for counters, ``_info`` for the build.

- ``brigade_cr_deliveries_total{format, outcome}``: ``format`` is one of the
  known payload formats (or ``none`` when a delivery was refused before its
  body was read); ``outcome`` is one of ``OUTCOMES``: the four of success
  and the outcomes of the error table (``core/answers.py``).
- ``brigade_cr_builds_total{project, event_type}``: builds *accepted*
  (created, or durably queued by the spool), counted when the delivery is
  answered; ``project`` is the ID of a project that authenticated the
  delivery (so it exists in Kubernetes); ``event_type`` one of the Brigade
  event types brigade-cr emits.
- ``brigade_cr_created_builds_total``: builds the store (Kubernetes or the
  directory) actually *created*, whichever path submitted them (the spool's
  drain, or a delivery without a spool): ``CountedBuilds`` counts every
  receipt from the store that is not a duplicate. With a spool it grows
  when the drain creates a build, later than ``builds_total``; a duplicate
  (the build was already there) is not counted.
- ``brigade_cr_http_request_duration_seconds{route, code}`` (histogram): every
  answer of the webhook listener, from the request's first line to its
  answer (the site's own 400/408/413/431 refusals included); ``route`` one of
  ``ROUTES`` (``webhook``, ``healthz``, ``readyz``, ``other``: never the
  path), ``code`` the status class (``2xx``, ``4xx``, ``5xx``...). Its
  ``_count`` is the request count. Metrics scrapes are not in it.
- ``brigade_cr_kube_requests_total{verb, code}`` and
  ``brigade_cr_kube_request_duration_seconds{verb}`` (histogram): every
  request the Kubernetes client sent (each attempt), ``verb`` one of
  ``KUBE_VERBS``, ``code`` its answer's status class or ``error`` when it got
  no usable answer (connection failure, TLS, timeout, unreadable body). A
  watch counts once, timed to its answer's headers.
- ``brigade_cr_build_info{version, twisted_version}``: always 1.
- ``process_*`` (CPU, memory, file descriptors, start time) and
  ``python_info``: prometheus_client's process and platform collectors.
- ``brigade_cr_spool_*`` (with a spool), read from its ``stats()`` at
  scrape time: gauges ``queued_records``, ``queued_bytes``,
  ``in_flight_records`` (being handed to the store now),
  ``oldest_record_age_seconds`` (0 when nothing is queued) and
  ``accepting``; counters ``handed_over_total{result}`` (``created`` or
  ``duplicate``: the drain rate, every record the drain finished with the
  store, by what the store answered; its ``created`` equals what the spool
  added to ``created_builds_total``), ``dead_letters_total`` and
  ``quarantined_total`` (records parked), all since start.

Metrics are served on their own listener (``--metrics``), not on the
webhook port, which may face the internet.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import attrs
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector
from twisted.copyright import version as twisted_version
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorThreads
from twisted.web.wsgi import WSGIResource
from zope.interface import implementer

from brigade_cr import __version__
from brigade_cr.core.answers import OUTCOMES
from brigade_cr.core.interfaces import (
    KUBE_VERBS,
    ROUTES,
    IBuilds,
    IGatewayMetrics,
    IKubeRequestMetrics,
    IPacedBuilds,
    IRequestMetrics,
)
from brigade_cr.core.values import Build, Receipt

# From a millisecond (an acknowledgement from memory) to the default
# request deadline and Kubernetes timeout (10 s).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def status_class(code: int | None) -> str:
    """``2xx`` for 200..299 and so on (100..599); ``error`` for None (no usable answer) or anything else."""
    if code is None or not 100 <= code <= 599:
        return "error"
    return f"{code // 100}xx"


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


@implementer(IGatewayMetrics, IRequestMetrics, IKubeRequestMetrics)
@attrs.define
class GatewayMetrics:
    """The gateway's metrics, in their own registry (no global state): see the module docstring."""

    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    deliveries: Counter = attrs.field(init=False)
    builds: Counter = attrs.field(init=False)
    created_builds: Counter = attrs.field(init=False)
    http_duration: Histogram = attrs.field(init=False)
    kube_requests: Counter = attrs.field(init=False)
    kube_duration: Histogram = attrs.field(init=False)
    # Each labelled series, found once: ``labels(**kw)`` checks and sorts
    # its arguments on every call, five times a delivery.
    _children: dict[tuple[Any, ...], Any] = attrs.field(init=False, factory=dict, repr=False)

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

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
        # Not "brigade_cr_builds_created": prometheus_client reserves that
        # name for brigade_cr_builds_total's creation time.
        self.created_builds = Counter(
            "brigade_cr_created_builds",
            "Builds the store created (not duplicates), from the spool's drain or a delivery without a spool.",
            registry=self.registry,
        )
        self.http_duration = Histogram(
            "brigade_cr_http_request_duration_seconds",
            "Answers of the webhook listener: seconds from the request's first line to its answer, "
            "by route and status class.",
            ["route", "code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.kube_requests = Counter(
            "brigade_cr_kube_requests",
            "Requests sent to the Kubernetes API, by verb and status class (error: no usable answer).",
            ["verb", "code"],
            registry=self.registry,
        )
        self.kube_duration = Histogram(
            "brigade_cr_kube_request_duration_seconds",
            "Seconds from sending a Kubernetes API request to its outcome (a watch: to its headers), by verb.",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        Info("brigade_cr_build", "The running brigade-cr.", registry=self.registry).info(
            {"version": __version__, "twisted_version": twisted_version}
        )
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def delivered(self, payload_format: str, outcome: str) -> None:
        """Count a delivery; ``outcome`` must be one of ``OUTCOMES``."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        self._child(self.deliveries, payload_format, outcome).inc()

    def built(self, project_id: str, event_type: str) -> None:
        """Count a build accepted for an authenticated project."""
        self._child(self.builds, project_id, event_type).inc()

    def build_created(self) -> None:
        """Count one build the store created."""
        self.created_builds.inc()

    def answered(self, route: str, code: int, seconds: float) -> None:
        """One answer of the webhook listener (``IRequestMetrics``); ``ValueError`` for a route not in ``ROUTES``."""
        if route not in ROUTES:
            raise ValueError(f"unknown route {route!r}")
        self._child(self.http_duration, route, status_class(code)).observe(seconds)

    def kube_request(self, verb: str, code: int | None, seconds: float) -> None:
        """One Kubernetes API request (``IKubeRequestMetrics``); ``ValueError`` for a verb not in ``KUBE_VERBS``."""
        if verb not in KUBE_VERBS:
            raise ValueError(f"unknown verb {verb!r}")
        self._child(self.kube_requests, verb, status_class(code)).inc()
        self._child(self.kube_duration, verb).observe(seconds)

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


@implementer(IPacedBuilds)
@attrs.frozen
class CountedBuilds:
    """
    ``inner`` (the store), calling ``created()`` for each build it answers
    created: a receipt that is neither a duplicate nor queued. Fires and
    fails as ``inner.submit`` does; ``would_wait()`` is the inner store's
    when it is paced, else False.
    """

    inner: IBuilds
    created: Callable[[], None]
    # inner, when it can tell whether a build would wait for its limit
    _paced: IPacedBuilds | None = attrs.field(init=False)

    @_paced.default
    def _paced_inner(self) -> IPacedBuilds | None:
        return IPacedBuilds(self.inner, None)

    def would_wait(self) -> bool:
        """``inner.would_wait()`` for an ``IPacedBuilds``; False for any other store."""
        return self._paced is not None and bool(self._paced.would_wait())

    def submit(self, build: Build) -> Deferred[Receipt]:
        """``inner.submit(build)``, counted when it fires with a new build."""
        submitted: Deferred[Receipt] = self.inner.submit(build)
        return submitted.addCallback(self._count)

    def _count(self, receipt: Receipt) -> Receipt:
        if not receipt.duplicate and not receipt.queued:
            self.created()
        return receipt


__all__ = ["LATENCY_BUCKETS", "OUTCOMES", "CountedBuilds", "GatewayMetrics", "status_class"]
