"""Metrics: exact counts per outcome, and label values only from configuration (promise P10, docs/guarantees.md)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from brigade_cr.app.metrics import OUTCOMES, GatewayMetrics
from brigade_cr.core.contract import project_id
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.core.values import Delivery
from brigade_cr.registries import FORMATS
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import project_secret

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = "metrics-secret"
PAYLOADS = Path(__file__).parent / "payloads"
EVENT_TYPES = {"image_push", "chart_push", "artifact_push", "image_delete", "chart_delete", "image_quarantine"}


def make() -> tuple[Gateway, GatewayMetrics, MemoryBuilds]:
    projects = MemoryProjects()
    projects.add(project_secret("solo", crGatewaySecret=SECRET.encode()))
    builds = MemoryBuilds()
    clock = Clock()
    metrics = GatewayMetrics()
    gateway = Gateway(
        projects, builds, clock, metrics=metrics, auth_failures=RateLimiter(clock, per_second=0.0, burst=3)
    )
    return gateway, metrics, builds


def send(gateway: Gateway, ref: str, body: bytes, token: str | None = SECRET, source: str = "192.0.2.1") -> None:
    query = [("token", token)] if token is not None else []
    Deferred.fromCoroutine(gateway.receive(Delivery(ref, "", body, NOW, {}, query, source=source))).addErrback(
        lambda failure: None
    )


def test_counts_by_outcome() -> None:
    """Each kind of delivery is counted once under its format and outcome."""
    gateway, metrics, _ = make()
    acr = (PAYLOADS / "acr_push.json").read_bytes()
    send(gateway, "solo", acr)  # built
    send(gateway, "solo", acr)  # duplicate
    send(gateway, "solo", (PAYLOADS / "acr_ping.json").read_bytes())  # ignored
    send(gateway, "solo", b"[]")  # malformed
    send(gateway, "solo", acr, token="wrong")  # unauthorized
    send(gateway, "nobody", acr)  # unauthorized (limited apart: another project)
    send(gateway, "solo", acr, token="wrong")  # unauthorized
    send(gateway, "solo", acr, token="wrong")  # unauthorized (third failure on solo)
    send(gateway, "solo", acr)  # rate limited
    sample = metrics.registry.get_sample_value
    assert sample("brigade_cr_deliveries_total", {"format": "acr", "outcome": "built"}) == 1
    assert sample("brigade_cr_deliveries_total", {"format": "acr", "outcome": "duplicate"}) == 1
    assert sample("brigade_cr_deliveries_total", {"format": "acr", "outcome": "ignored"}) == 1
    assert sample("brigade_cr_deliveries_total", {"format": "none", "outcome": "malformed"}) == 1
    assert sample("brigade_cr_deliveries_total", {"format": "none", "outcome": "unauthorized"}) == 4
    assert sample("brigade_cr_deliveries_total", {"format": "none", "outcome": "rate_limited"}) == 1
    assert sample("brigade_cr_builds_total", {"project": project_id("solo"), "event_type": "image_push"}) == 1


def test_unknown_outcome_refused() -> None:
    """Outcomes are a closed set."""
    with pytest.raises(ValueError):
        GatewayMetrics().delivered("acr", "whatever")


def _label_values(metrics: GatewayMetrics) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            for name, value in sample.labels.items():
                values.setdefault(name, set()).add(value)
    return values


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["solo", "nobody", "brigade-x"]) | st.text(min_size=1, max_size=30),
            st.binary(max_size=80) | st.sampled_from([b"{}", (PAYLOADS / "harbor_push.json").read_bytes()]),
            st.sampled_from([SECRET, "wrong", None]),
            st.text(max_size=10),
        ),
        max_size=25,
    )
)
def test_label_values_come_from_configuration(deliveries: list[tuple[str, bytes, str | None, str]]) -> None:
    """Whatever arrives, labels take only known formats, outcomes, configured projects and event types."""
    gateway, metrics, _ = make()
    for ref, body, token, source in deliveries:
        send(gateway, ref, body, token, source)
    values = _label_values(metrics)
    assert values.get("format", set()) <= {f.name for f in FORMATS} | {"none"}
    assert values.get("outcome", set()) <= set(OUTCOMES)
    assert values.get("project", set()) <= {project_id("solo")}
    assert values.get("event_type", set()) <= EVENT_TYPES


def test_spool_gauges() -> None:
    """
    The spool's stats are exported at scrape time: the queue, the records in
    flight and the oldest record's age as gauges, parked records as counters.
    """
    from brigade_cr.stores.spool import SpoolStats

    metrics = GatewayMetrics()
    current = {"queued": 3}

    def stats() -> SpoolStats:
        return SpoolStats(
            queued=current["queued"],
            queued_bytes=1234,
            created=7,
            duplicates=6,
            dead_lettered=1,
            quarantined=2,
            discarded=0,
            accepting=True,
            in_flight=4,
            oldest_age=12.5,
        )

    metrics.watch_spool(stats)
    sample = metrics.registry.get_sample_value
    assert sample("brigade_cr_spool_queued_records") == 3
    current["queued"] = 5
    assert sample("brigade_cr_spool_queued_records") == 5
    assert sample("brigade_cr_spool_queued_bytes") == 1234
    assert sample("brigade_cr_spool_in_flight_records") == 4
    assert sample("brigade_cr_spool_oldest_record_age_seconds") == 12.5
    assert sample("brigade_cr_spool_dead_letters_total") == 1
    assert sample("brigade_cr_spool_quarantined_total") == 2
    assert sample("brigade_cr_spool_accepting") == 1
    assert sample("brigade_cr_spool_handed_over_total", {"result": "created"}) == 7
    assert sample("brigade_cr_spool_handed_over_total", {"result": "duplicate"}) == 6
    # The gauges these counters replace are gone.
    assert sample("brigade_cr_spool_dead_lettered") is None
    assert sample("brigade_cr_spool_quarantined") is None
    types = {family.name: family.type for family in metrics.registry.collect() if "spool" in family.name}
    assert types == {
        "brigade_cr_spool_queued_records": "gauge",
        "brigade_cr_spool_queued_bytes": "gauge",
        "brigade_cr_spool_in_flight_records": "gauge",
        "brigade_cr_spool_oldest_record_age_seconds": "gauge",
        "brigade_cr_spool_accepting": "gauge",
        "brigade_cr_spool_dead_letters": "counter",
        "brigade_cr_spool_quarantined": "counter",
        "brigade_cr_spool_handed_over": "counter",
    }


def test_gateway_metrics_provide_the_core_interface() -> None:
    """GatewayMetrics is the IGatewayMetrics the gateway is written against (core never imports app)."""
    from zope.interface.verify import verifyObject

    from brigade_cr.core.interfaces import IGatewayMetrics

    assert verifyObject(IGatewayMetrics, GatewayMetrics())
