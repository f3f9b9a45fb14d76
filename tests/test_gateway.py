"""The use case: deliveries in, builds or reasoned refusals out (no I/O, no reactor)."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, cast

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from zope.interface import implementer

from brigade_cr.core.contract import decode_ulid_time, is_ulid, project_id
from brigade_cr.core.errors import BackendUnavailable, BadRequest, Unauthorized
from brigade_cr.core.gateway import DELIVERY_LINE, IGNORED_LINE, Accepted, Gateway, Ignored, event_type, titles
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.values import Build, Delivery, Receipt, RegistryEvent
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import SpooledBuilds
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import project_secret
from tests.helpers import failure_of, result_of

PAYLOADS = Path(__file__).parent / "payloads"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = b"gateway-test-secret"


def make_gateway(**kwargs: object) -> tuple[Gateway, MemoryProjects, MemoryBuilds]:
    projects = MemoryProjects()
    projects.add(project_secret("acme/webapp", crGatewaySecret=SECRET))
    builds = MemoryBuilds()
    clock = Clock()
    clock.advance(NOW.timestamp())
    gateway = Gateway(
        projects,
        builds,
        clock,
        **kwargs,  # type: ignore[arg-type]
    )
    return gateway, projects, builds


def delivery(body: bytes, ref: str = "acme/webapp", commit: str = "", **kwargs: object) -> Delivery:
    """A delivery presenting the project's secret as ?token= unless told otherwise."""
    kwargs.setdefault("query", [("token", SECRET.decode())])
    return Delivery(project_ref=ref, commit=commit, body=body, received=NOW, **kwargs)  # type: ignore[arg-type]


def test_dockerhub_push_becomes_build() -> None:
    """A Docker Hub push creates one image_push build carrying the body byte for byte."""
    gateway, _, builds = make_gateway()
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    outcome = result_of(gateway.receive(delivery(body)))
    assert isinstance(outcome, Accepted)
    build = outcome.build
    assert build.project_id == project_id("acme/webapp")
    assert build.event_type == "image_push"
    assert build.event_provider == "dockerhub"
    assert build.commit_ref == "master"
    assert build.payload == body
    assert build.short_title == "image_push docker.io/acme/webapp:v1.4.2"
    assert build.long_title == "dockerhub image_push: docker.io/acme/webapp:v1.4.2 by acme-ci"
    assert is_ulid(build.ulid)
    # The build ID's time is the push's own time (pushed_at), not the receive time.
    assert decode_ulid_time(build.ulid) == 1767225600000
    assert list(builds.secrets) == [build.name]
    stored = builds.secrets[build.name]
    assert base64.b64decode(stored["data"]["payload"]) == body


@pytest.mark.parametrize(
    ("sample", "kind"),
    [
        ("acr_push.json", "image_push"),
        ("acr_delete.json", "image_delete"),
        ("acr_quarantine.json", "image_quarantine"),
        ("acr_chart_push.json", "chart_push"),
        ("acr_chart_delete.json", "chart_delete"),
    ],
)
def test_acr_event_types(sample: str, kind: str) -> None:
    """Each ACR action becomes its Brigade event type with provider acr."""
    gateway, _, builds = make_gateway()
    outcome = result_of(gateway.receive(delivery((PAYLOADS / sample).read_bytes())))
    assert isinstance(outcome, Accepted)
    assert (outcome.build.event_type, outcome.build.event_provider) == (kind, "acr")
    assert len(builds.secrets) == 1


def test_acr_titles_name_digest() -> None:
    """ACR titles carry host, repository, tag and digest."""
    gateway, _, _ = make_gateway()
    outcome = result_of(gateway.receive(delivery((PAYLOADS / "acr_push.json").read_bytes())))
    assert isinstance(outcome, Accepted)
    assert outcome.build.short_title == "image_push acmeregistry.azurecr.io/team/webapp:v1.4.2"
    assert outcome.build.long_title == (
        "acr image_push: acmeregistry.azurecr.io/team/webapp:v1.4.2"
        "@sha256:9f74e4efee8db5b6f712ce92b9d23d665400532944ca73333d6d5db561268006"
    )


def test_ping_makes_no_build() -> None:
    """An ACR ping is answered as ignored and creates nothing."""
    gateway, _, builds = make_gateway()
    outcome = result_of(gateway.receive(delivery((PAYLOADS / "acr_ping.json").read_bytes())))
    assert outcome == Ignored(project_id("acme/webapp"), "acr", "ping")
    assert builds.secrets == {}


def test_generic_object_is_image_push() -> None:
    """Any other JSON object is an image_push from provider generic."""
    gateway, _, _ = make_gateway()
    outcome = result_of(gateway.receive(delivery(b'{"anything": [1, 2]}')))
    assert isinstance(outcome, Accepted)
    assert (outcome.build.event_type, outcome.build.event_provider) == ("image_push", "generic")
    assert outcome.build.short_title == "image_push from a generic webhook"


def test_commit_and_default_ref() -> None:
    """The URL's commit becomes commit_ref; without one the configured default is used."""
    gateway, _, _ = make_gateway(default_ref="main")
    with_commit = result_of(gateway.receive(delivery(b"{}", commit="abc123")))
    without = result_of(gateway.receive(delivery(b"{}")))
    assert isinstance(with_commit, Accepted) and isinstance(without, Accepted)
    assert with_commit.build.commit_ref == "abc123"
    assert without.build.commit_ref == "main"


def test_project_id_reference() -> None:
    """A delivery may name its project by ID."""
    gateway, _, _ = make_gateway()
    outcome = result_of(gateway.receive(delivery(b"{}", ref=project_id("acme/webapp"))))
    assert isinstance(outcome, Accepted)


def test_unknown_project() -> None:
    """An unknown project fails as Unauthorized (no oracle) and creates nothing."""
    gateway, _, builds = make_gateway()
    error = failure_of(gateway.receive(delivery(b"{}", ref="nope")))
    assert isinstance(error, Unauthorized)
    assert error.reason == "no such project"
    assert builds.secrets == {}


def test_malformed_body() -> None:
    """A body that is not a JSON object fails with BadRequest and creates nothing."""
    gateway, _, builds = make_gateway()
    error = failure_of(gateway.receive(delivery(b"[1]")))
    assert isinstance(error, BadRequest)
    assert error.message == "body is not a JSON object"
    assert builds.secrets == {}


def test_store_down() -> None:
    """A store outage surfaces as BackendUnavailable, never as success."""
    gateway, _, builds = make_gateway()
    builds.down = True
    assert isinstance(failure_of(gateway.receive(delivery(b"{}"))), BackendUnavailable)
    assert builds.secrets == {}


def test_projects_down() -> None:
    """A project lookup outage surfaces as BackendUnavailable."""
    gateway, projects, _ = make_gateway()
    projects.down = True
    assert isinstance(failure_of(gateway.receive(delivery(b"{}"))), BackendUnavailable)


@pytest.mark.parametrize("sample", ["dockerhub_push.json", "acr_push.json", "acr_delete.json"])
def test_redelivery_is_one_build(sample: str) -> None:
    """The same event delivered twice, even a minute apart, is one build; the second answer says duplicate."""
    gateway, _, builds = make_gateway()
    body = (PAYLOADS / sample).read_bytes()
    first = result_of(gateway.receive(delivery(body)))
    later = attrs.evolve(delivery(body), received=datetime(2026, 11, 26, 12, 1, 30, tzinfo=timezone.utc))
    second = result_of(gateway.receive(later))
    assert isinstance(first, Accepted) and isinstance(second, Accepted)
    assert first.build.name == second.build.name
    assert (first.receipt.duplicate, second.receipt.duplicate) == (False, True)
    assert list(builds.secrets) == [first.build.name]


def test_different_events_are_different_builds() -> None:
    """Different ACR event ids, tags or commits make different builds."""
    gateway, _, builds = make_gateway()
    document = json.loads((PAYLOADS / "acr_push.json").read_bytes())
    names = set()
    for change in ({}, {"id": "other-id"}):
        body = json.dumps({**document, **change}).encode()
        outcome = result_of(gateway.receive(delivery(body)))
        assert isinstance(outcome, Accepted)
        names.add(outcome.build.name)
    outcome = result_of(gateway.receive(delivery((PAYLOADS / "acr_push.json").read_bytes(), commit="abc")))
    assert isinstance(outcome, Accepted)
    names.add(outcome.build.name)
    assert len(names) == 3
    assert sorted(builds.secrets) == sorted(names)


def test_generic_same_body_same_minute_is_duplicate() -> None:
    """A generic body re-sent within the minute bucket is a duplicate; in the next bucket, a new build."""
    gateway, _, builds = make_gateway()
    result_of(gateway.receive(delivery(b'{"x": 1}')))
    again = result_of(
        gateway.receive(
            attrs.evolve(delivery(b'{"x": 1}'), received=datetime(2026, 11, 26, 12, 0, 59, tzinfo=timezone.utc))
        )
    )
    assert isinstance(again, Accepted) and again.receipt.duplicate
    later = result_of(
        gateway.receive(
            attrs.evolve(delivery(b'{"x": 1}'), received=datetime(2026, 11, 26, 12, 1, tzinfo=timezone.utc))
        )
    )
    assert isinstance(later, Accepted) and not later.receipt.duplicate
    assert len(builds.secrets) == 2


def test_event_type_mapping() -> None:
    """Actions and artifact classes map to Brigade event types."""
    base = RegistryEvent(registry="x", action="push", time=NOW)
    cases = {
        ("push", "image"): "image_push",
        ("push", "unknown"): "image_push",
        ("push", "chart"): "chart_push",
        ("push", "other"): "artifact_push",
        ("delete", "image"): "image_delete",
        ("delete", "chart"): "chart_delete",
        ("quarantine", "image"): "image_quarantine",
    }
    for (action, klass), expected in cases.items():
        event = RegistryEvent(registry="x", action=action, time=NOW, artifact_class=klass)
        assert event_type(event) == expected
    assert event_type(base) == "image_push"


def test_titles_for_several_events() -> None:
    """A delivery of several events names them all in the long title."""
    events = [
        RegistryEvent(registry="distribution", action="push", time=NOW, host="r.example", repository="a/b", tag="1"),
        RegistryEvent(registry="distribution", action="push", time=NOW, host="r.example", repository="a/b", tag="2"),
    ]
    assert titles(events, "image_push") == (
        "image_push r.example/a/b:1 (+1 more)",
        "distribution image_push: r.example/a/b:1, r.example/a/b:2",
    )


def test_titles_are_bounded() -> None:
    """Titles never exceed 1024 characters (repositories and tags are bounded by the grammar; hosts
    and actors are not)."""
    events = [
        RegistryEvent(registry="x", action="push", time=NOW, host="h" * 5000, repository="r" * 255, tag="t" * 128)
    ] * 10
    short, long = titles(events, "image_push")
    assert len(short) == 1024 and len(long) == 1024


# -- one structured info line per delivery ------------------------------------------------


@implementer(IBuilds)
class QueuingBuilds:
    """An IBuilds that answers every build as queued (a spool behind a slow API)."""

    def submit(self, build: Build) -> Deferred[Receipt]:
        return succeed(Receipt(build.name, queued=True))


def gateway_lines(monkeypatch: pytest.MonkeyPatch) -> list[LogEvent]:
    """Every event the gateway logs."""
    captured: list[LogEvent] = []
    observer: Any = captured.append
    monkeypatch.setattr(Gateway, "log", Logger(observer=observer))
    return captured


def info_lines(events: list[LogEvent]) -> list[str]:
    return [str(formatEvent(event)) for event in events if event["log_level"] >= LogLevel.info]


PID = project_id("acme/webapp")


def test_one_line_for_a_built_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A built delivery logs one info line naming project, type, format, build, identity source and outcome."""
    events = gateway_lines(monkeypatch)
    gateway, _, _ = make_gateway()
    outcome = result_of(gateway.receive(delivery((PAYLOADS / "acr_push.json").read_bytes())))
    assert isinstance(outcome, Accepted)
    name = outcome.build.name
    assert info_lines(events) == [f"Delivery for {PID}: image_push from acr, build {name} (sender identity): built"]
    [event] = events
    assert event["log_format"] == DELIVERY_LINE
    fields = {key: event[key] for key in ("project_id", "event_type", "payload_format", "build_name")}
    assert fields == {"project_id": PID, "event_type": "image_push", "payload_format": "acr", "build_name": name}
    more = {key: event[key] for key in ("identity_source", "outcome", "duplicate", "queued", "events", "buildable")}
    assert more == {
        "identity_source": "sender",
        "outcome": "built",
        "duplicate": False,
        "queued": False,
        "events": 1,
        "buildable": 1,
    }


def test_one_line_for_a_duplicate_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-delivery logs its one line with outcome duplicate (derived identity for Docker Hub)."""
    events = gateway_lines(monkeypatch)
    gateway, _, _ = make_gateway()
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    first = result_of(gateway.receive(delivery(body)))
    result_of(gateway.receive(delivery(body)))
    assert isinstance(first, Accepted)
    name = first.build.name
    assert info_lines(events) == [
        f"Delivery for {PID}: image_push from dockerhub, build {name} (derived identity): built",
        f"Delivery for {PID}: image_push from dockerhub, build {name} (derived identity): duplicate",
    ]
    assert [(e["outcome"], e["duplicate"], e["queued"]) for e in events] == [
        ("built", False, False),
        ("duplicate", True, False),
    ]


def test_one_line_for_a_queued_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """A delivery the store queued logs its one line with outcome queued."""
    events = gateway_lines(monkeypatch)
    gateway = Gateway(make_gateway()[1], QueuingBuilds(), Clock())
    outcome = result_of(gateway.receive(delivery(b'{"anything": [1, 2]}')))
    assert isinstance(outcome, Accepted)
    name = outcome.build.name
    assert info_lines(events) == [
        f"Delivery for {PID}: image_push from generic, build {name} (synthetic identity): queued"
    ]
    assert [(e["outcome"], e["duplicate"], e["queued"]) for e in events] == [("queued", False, True)]


def test_one_line_for_an_ignored_delivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ignored delivery (an ACR ping) logs one info line saying why."""
    events = gateway_lines(monkeypatch)
    gateway, _, _ = make_gateway()
    result_of(gateway.receive(delivery((PAYLOADS / "acr_ping.json").read_bytes())))
    assert info_lines(events) == [f"Delivery for {PID} from acr ignored: ping"]
    assert [(e["log_format"], e["outcome"], e["events"]) for e in events] == [(IGNORED_LINE, "ignored", 1)]


def test_one_info_line_through_the_spool(tmp_path: Path) -> None:
    """Through a spool in front of the store, a delivery logs one info line in all; the hand-over is at debug."""
    captured: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith("brigade_cr"):
            captured.append(event)

    projects = make_gateway()[1]
    clock = Clock()
    spool = SpooledBuilds(tmp_path / "spool", MemoryBuilds(), clock, InlineIO())
    result_of(spool.start())
    gateway = Gateway(projects, spool, clock)
    globalLogPublisher.addObserver(cast(ILogObserver, observe))
    try:
        outcome = result_of(gateway.receive(delivery((PAYLOADS / "acr_push.json").read_bytes())))
    finally:
        globalLogPublisher.removeObserver(cast(ILogObserver, observe))
        stopping = spool.stop(0)
        clock.advance(0)
        result_of(stopping)
    assert isinstance(outcome, Accepted)
    name = outcome.build.name
    assert info_lines(captured) == [f"Delivery for {PID}: image_push from acr, build {name} (sender identity): built"]
    assert [(e["log_level"], e["log_format"]) for e in captured if e["log_level"] < LogLevel.info] == [
        (LogLevel.debug, "Build {build} for {project} handed over from the spool{duplicate}")
    ]
