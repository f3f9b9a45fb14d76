"""Metrics: exact counts per outcome, and label values only from configuration (promise P10, docs/guarantees.md)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq
from twisted.copyright import version as twisted_version
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from brigade_cr import __version__
from brigade_cr.app.compose import make_service
from brigade_cr.app.metrics import OUTCOMES, GatewayMetrics, status_class
from brigade_cr.core.contract import project_id
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.core.values import Delivery
from brigade_cr.registries import FORMATS
from brigade_cr.stores.kube.client import KubeClient
from brigade_cr.stores.kube.credentials import StaticToken
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import a_build, project_secret
from tests.helpers import failure_of, promtool, result_of, write_minimal_kubeconfig
from tests.kubeapi import FakeKube, Hang
from tests.test_service import SECRET as SERVICE_SECRET
from tests.test_service import GatewayReactor, deliver, get, parse
from tests.wire import parse_responses

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


# -- the families added for operations (issue 11) ---------------------------------------


@pytest.mark.parametrize(
    "code, shown",
    [
        (200, "2xx"),
        (201, "2xx"),
        (302, "3xx"),
        (404, "4xx"),
        (431, "4xx"),
        (503, "5xx"),
        (101, "1xx"),
        (None, "error"),
        (99, "error"),
        (600, "error"),
    ],
)
def test_status_class(code: int | None, shown: str) -> None:
    """Statuses are counted by class; no answer (or a status outside 100..599) is ``error``."""
    assert status_class(code) == shown


def test_unknown_route_and_verb_refused() -> None:
    """Routes and verbs are closed sets, as outcomes are: nothing else becomes a label."""
    metrics = GatewayMetrics()
    with pytest.raises(ValueError):
        metrics.answered("/events/webhook/solo", 200, 0.1)
    with pytest.raises(ValueError):
        metrics.kube_request("GET", 200, 0.1)
    assert metrics.registry.get_sample_value("brigade_cr_kube_requests_total", {"verb": "GET", "code": "2xx"}) is None


def test_build_info() -> None:
    """brigade_cr_build_info carries brigade-cr's version (and Twisted's), always 1."""
    sample = GatewayMetrics().registry.get_sample_value
    assert sample("brigade_cr_build_info", {"version": __version__, "twisted_version": twisted_version}) == 1


def test_process_and_platform_collectors() -> None:
    """The process and platform collectors are in the gateway's own registry (not the global one)."""
    import resource

    from prometheus_client import REGISTRY

    metrics = GatewayMetrics()
    sample = metrics.registry.get_sample_value
    assert sample("process_max_fds") == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    python = {
        "implementation": platform.python_implementation(),
        "major": str(sys.version_info.major),
        "minor": str(sys.version_info.minor),
        "patchlevel": str(sys.version_info.micro),
        "version": platform.python_version(),
    }
    assert sample("python_info", python) == 1
    assert (
        REGISTRY.get_sample_value("brigade_cr_build_info", {"version": __version__, "twisted_version": twisted_version})
        is None
    )
    # Two gateways (tests make many) each have their own: no "Duplicated timeseries".
    assert GatewayMetrics().registry.get_sample_value("python_info", python) == 1


def test_counted_builds() -> None:
    """CountedBuilds counts builds the store created: not duplicates, not queued receipts, not failures."""
    from brigade_cr.app.metrics import CountedBuilds
    from brigade_cr.core.values import Receipt

    metrics = GatewayMetrics()
    inner = MemoryBuilds()
    builds = CountedBuilds(inner, metrics.build_created)
    created = metrics.registry.get_sample_value
    build = a_build()
    assert result_of(builds.submit(build)) == Receipt(build.name)
    assert result_of(builds.submit(build)) == Receipt(build.name, duplicate=True)
    inner.down = True
    failure_of(builds.submit(a_build("01jgq8w4h0bbbbbbbbbbbbbbbb")))
    assert created("brigade_cr_created_builds_total") == 1

    @implementer(IBuilds)
    class Queueing:
        def submit(self, build: Any) -> Deferred[Receipt]:
            return succeed(Receipt(build.name, queued=True))

    result_of(CountedBuilds(Queueing(), metrics.build_created).submit(build))
    assert created("brigade_cr_created_builds_total") == 1


def test_counted_builds_pass_on_would_wait() -> None:
    """CountedBuilds is an IPacedBuilds: its inner store's would_wait() when paced, else False."""
    from twisted.internet.task import Clock
    from zope.interface.verify import verifyObject

    from brigade_cr.app.metrics import CountedBuilds
    from brigade_cr.core.interfaces import IPacedBuilds
    from brigade_cr.stores.retry import Throttle, ThrottledBuilds

    clock = Clock()
    throttle = Throttle(clock, per_second=1.0, burst=1)
    paced = CountedBuilds(ThrottledBuilds(MemoryBuilds(), throttle), lambda: None)
    assert verifyObject(IPacedBuilds, paced)
    assert not paced.would_wait()
    throttle.acquire()
    assert paced.would_wait()
    assert not CountedBuilds(MemoryBuilds(), lambda: None).would_wait()


# -- a composed gateway's page -------------------------------------------------------------

ACR_PUSH = (PAYLOADS / "acr_push.json").read_bytes()


def _directory_gateway(tmp_path: Path) -> Path:
    projects = tmp_path / "data" / "projects"
    projects.mkdir(parents=True)
    (projects / "solo.json").write_text(json.dumps(project_secret("solo", crGatewaySecret=SERVICE_SECRET.encode())))
    return tmp_path / "data"


def _compose(tmp_path: Path, *, spool: bool) -> tuple[GatewayMetrics, GatewayReactor, Any]:
    data = _directory_gateway(tmp_path)
    argv = ["--backend", f"dir:{data}", "--port", "tcp:8000", "--metrics", "tcp:9100"]
    argv += ["--spool", str(tmp_path / "spool")] if spool else ["--no-spool"]
    metrics = GatewayMetrics()
    reactor = GatewayReactor()
    service = make_service(parse(*argv), reactor, {}, metrics=metrics)
    service.startService()
    reactor.pool.run()
    return metrics, reactor, service


def _settle(reactor: GatewayReactor) -> None:
    # The directory store and the spool work in the thread pool; the spool
    # waits on the clock between steps.
    for _ in range(50):
        reactor.pool.run()
        reactor.advance(0.1)


def _status(transport: Any) -> int:
    return int(transport.value().split(b" ", 2)[1])


@pytest.mark.parametrize("spool", [False, True])
def test_composed_gateway_counts_created_builds(tmp_path: Path, spool: bool) -> None:
    """
    make_service counts every build the store created once, by either path:
    without a spool as the delivery is answered, with one as the drain
    creates it (then equal to handed_over_total{result="created"}); the same
    delivery again creates nothing.
    """
    metrics, reactor, service = _compose(tmp_path, spool=spool)
    first = deliver(reactor)
    _settle(reactor)
    second = deliver(reactor)
    _settle(reactor)
    assert (_status(first), _status(second)) == (200, 200)
    sample = metrics.registry.get_sample_value
    assert sample("brigade_cr_created_builds_total") == 1
    assert sample("brigade_cr_builds_total", {"project": project_id("solo"), "event_type": "image_push"}) == 1
    assert sample("brigade_cr_http_request_duration_seconds_count", {"route": "webhook", "code": "2xx"}) == 2
    if spool:
        assert sample("brigade_cr_spool_handed_over_total", {"result": "created"}) == 1
    service.stopService()
    _settle(reactor)


def test_kube_backend_observes_into_the_gateway_metrics(tmp_path: Path) -> None:
    """choose_backend hands the gateway's metrics to the Kubernetes client it makes."""
    from brigade_cr.app.backend import choose_backend

    kubeconfig = tmp_path / "kubeconfig"
    write_minimal_kubeconfig(kubeconfig)
    metrics = GatewayMetrics()
    backend = choose_backend(parse("--kubeconfig", str(kubeconfig)), GatewayReactor(), {}, kube_metrics=metrics)
    assert backend.close is not None
    client = backend.close.__self__  # type: ignore[attr-defined]
    assert client.metrics is metrics
    assert backend.builds.client is client  # type: ignore[attr-defined]


def full_page(tmp_path: Path) -> str:
    """
    The /metrics text of a composed gateway (directory store, spool) after
    a delivery, probes and a 404, with a Kubernetes client observing into
    the same metrics (a create, a 404, a timeout and a watch): every family
    has samples.
    """
    metrics, reactor, service = _compose(tmp_path, spool=True)
    deliver(reactor)
    _settle(reactor)
    for path in (b"/healthz", b"/readyz", b"/nope"):
        get(reactor, 8000, path)
    clock = Clock()
    fake = FakeKube(clock=clock, tokens=frozenset({"t0ken"}), initial_namespaces=["brigade"])
    stub = StubTreq(fake.resource())
    client = KubeClient(stub, "https://kube.example:6443", StaticToken("t0ken"), clock, timeout=3.0, metrics=metrics)
    result_of(client.create_secret("brigade", {"metadata": {"name": "a"}, "type": "Opaque"}))
    failure_of(client.get_secret("brigade", "missing"))
    watch = client.watch_secrets("brigade", lambda event: None)
    stub.flush()
    fake.add_fault(Hang(verbs=["list"]))
    hung = client.list_secrets("brigade")
    clock.advance(3.0)
    failure_of(hung)
    watch.cancel()
    stub.flush()
    failure_of(watch)
    answer, _ = parse_responses(get(reactor, 9100, b"/metrics"), [b"GET"])
    service.stopService()
    _settle(reactor)
    assert answer[0].code == 200
    # The classic text format, which promtool checks (a scraper asking for OpenMetrics gets that).
    assert answer[0].header(b"content-type") == b"text/plain; version=0.0.4; charset=utf-8"
    return answer[0].body.decode("utf-8")


FAMILIES = {
    "brigade_cr_deliveries": "counter",
    "brigade_cr_builds": "counter",
    "brigade_cr_created_builds": "counter",
    "brigade_cr_http_request_duration_seconds": "histogram",
    "brigade_cr_kube_requests": "counter",
    "brigade_cr_kube_request_duration_seconds": "histogram",
    "brigade_cr_build_info": "gauge",
    "brigade_cr_spool_queued_records": "gauge",
    "brigade_cr_spool_queued_bytes": "gauge",
    "brigade_cr_spool_in_flight_records": "gauge",
    "brigade_cr_spool_oldest_record_age_seconds": "gauge",
    "brigade_cr_spool_accepting": "gauge",
    "brigade_cr_spool_dead_letters": "counter",
    "brigade_cr_spool_quarantined": "counter",
    "brigade_cr_spool_handed_over": "counter",
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
    "process_cpu_seconds": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "python_info": "gauge",
}
# prometheus_client's creation time of each counter and histogram (as a gauge in this text format).
# The spool's and the process's counters are read at scrape time: they have none.
CREATED = {
    f"{name}_created": "gauge"
    for name, kind in FAMILIES.items()
    if kind in ("counter", "histogram") and not name.startswith(("brigade_cr_spool_", "process_"))
}


def test_full_page_has_every_family(tmp_path: Path) -> None:
    """
    A composed gateway's /metrics has exactly these families, each with a
    sample, and the samples the page was made to have (exact values).
    """
    text = full_page(tmp_path)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert {name: family.type for name, family in families.items()} == FAMILIES | CREATED
    assert all(family.samples for family in families.values())
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    http = "brigade_cr_http_request_duration_seconds_count"
    assert values[(http, (("code", "2xx"), ("route", "webhook")))] == 1
    assert values[(http, (("code", "2xx"), ("route", "healthz")))] == 1
    assert values[(http, (("code", "2xx"), ("route", "readyz")))] == 1
    assert values[(http, (("code", "4xx"), ("route", "other")))] == 1
    kube = "brigade_cr_kube_requests_total"
    assert {labels: v for (name, labels), v in values.items() if name == kube} == {
        (("code", "2xx"), ("verb", "create")): 1,
        (("code", "4xx"), ("verb", "get")): 1,
        (("code", "2xx"), ("verb", "watch")): 1,
        (("code", "error"), ("verb", "list")): 1,
    }
    assert values[("brigade_cr_kube_request_duration_seconds_sum", (("verb", "list"),))] == 3.0
    assert values[("brigade_cr_created_builds_total", ())] == 1
    assert values[("brigade_cr_spool_handed_over_total", (("result", "created"),))] == 1
    assert values[("brigade_cr_build_info", (("twisted_version", twisted_version), ("version", __version__)))] == 1


@pytest.mark.slow
def test_promtool_accepts_the_full_page(tmp_path: Path) -> None:
    """`promtool check metrics` reads the full page with no error and no lint complaint."""
    text = full_page(tmp_path)
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.slow
def test_promtool_would_complain() -> None:
    """The check is real: promtool flags a counter without _total and a histogram not in base units."""
    bad = (
        "# HELP brigade_cr_things Things.\n# TYPE brigade_cr_things counter\nbrigade_cr_things 1\n"
        "# HELP brigade_cr_wait_milliseconds Wait.\n# TYPE brigade_cr_wait_milliseconds histogram\n"
        'brigade_cr_wait_milliseconds_bucket{le="+Inf"} 1\nbrigade_cr_wait_milliseconds_sum 1\n'
        "brigade_cr_wait_milliseconds_count 1\n"
    )
    result = subprocess.run(
        [promtool(), "check", "metrics"], input=bad, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    complaints = result.stdout + result.stderr
    assert 'counter metrics should have "_total" suffix' in complaints
    assert "use base unit" in complaints
