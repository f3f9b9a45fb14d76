"""The gateway service: start order, and a graceful stop within its deadline."""

from __future__ import annotations

from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from brigade_cr.app.service import GatewayService
from brigade_cr.core.gateway import Gateway
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from brigade_cr.web.routes import WebhookSite


class Listening(Service):
    """Records when it starts and stops."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def startService(self) -> None:
        super().startService()
        self.events.append("listening")

    def stopService(self) -> None:
        super().stopService()
        self.events.append("not listening")


@attrs.define
class FakeSpool:
    events: list[str]
    started: Deferred[None] = attrs.Factory(Deferred)
    stopped_with: list[float] = attrs.Factory(list)

    def start(self) -> Deferred[None]:
        self.events.append("spool starting")
        return self.started

    def stop(self, deadline: float) -> Deferred[None]:
        self.stopped_with.append(deadline)
        self.events.append("spool stopped")
        return succeed(None)

    def accepting(self) -> bool:
        return True


@attrs.define
class Task:
    events: list[str]

    def start(self) -> None:
        self.events.append("task started")

    def stop(self) -> None:
        self.events.append("task stopped")


def make(spool: bool = True) -> tuple[GatewayService, list[str], Clock, FakeSpool]:
    events: list[str] = []
    clock = Clock()
    site = WebhookSite(Gateway(MemoryProjects(), MemoryBuilds(), clock), clock)
    fake_spool = FakeSpool(events)

    def close() -> Deferred[None]:
        events.append("closed")
        return succeed(None)

    service = GatewayService(
        site=site,
        listening=Listening(events),
        clock=clock,
        spool=fake_spool if spool else None,
        background=[Task(events)],
        close=close,
        drain_deadline=25.0,
        stop_reactor=lambda: events.append("reactor stopped"),
        stopped_cleanly=lambda: events.append("clean exit"),
    )
    return service, events, clock, fake_spool


def test_listens_only_after_spool_recovered() -> None:
    """With a spool, connections are accepted only once its recovery is done."""
    service, events, _, spool = make()
    service.startService()
    assert events == ["task started", "spool starting"]
    spool.started.callback(None)
    assert events[-1] == "listening"


def test_spool_that_cannot_start_stops_the_process() -> None:
    """A spool that cannot start (locked, unreadable) stops the reactor instead of listening."""
    service, events, _, spool = make()
    service.startService()
    spool.started.errback(RuntimeError("locked"))
    assert events[-1] == "reactor stopped"
    assert "listening" not in events


def test_spool_that_cannot_start_marks_the_start_failed() -> None:
    """A spool that fails at start calls ``failed`` (exit non-zero at the end) before stopping the reactor."""
    service, events, _, spool = make()
    service.failed = lambda: events.append("failed")
    service.startService()
    spool.started.errback(RuntimeError("locked"))
    assert events[-2:] == ["failed", "reactor stopped"]
    assert "listening" not in events


def test_without_spool_listens_at_once() -> None:
    """Without a spool the gateway listens at once."""
    service, events, _, _ = make(spool=False)
    service.startService()
    assert events == ["task started", "listening"]


def test_graceful_stop_order() -> None:
    """Stop: not ready, stop listening, wait for in-flight deliveries, stop the spool, then close."""
    service, events, clock, spool = make()
    service.startService()
    spool.started.callback(None)
    site = service.site
    site._in_flight = 1  # a delivery in flight
    stopped: list[Any] = []
    service.stopService().addBoth(stopped.append)
    assert site.shutting_down
    assert site.not_ready() == "shutting down"
    assert events[-1] == "not listening"
    clock.advance(3)
    assert stopped == []
    # The delivery finishes: the rest of the stop goes on.
    site._in_flight = 0
    for waiter in site._idle_waiters:
        waiter.callback(None)
    assert events[-4:] == ["spool stopped", "task stopped", "closed", "clean exit"]
    assert spool.stopped_with == [22.0]
    assert stopped == [None]


def test_stop_deadline_with_stuck_delivery() -> None:
    """A delivery that never finishes does not hold the stop past the deadline."""
    service, events, clock, spool = make()
    service.startService()
    spool.started.callback(None)
    service.site._in_flight = 1
    stopped: list[Any] = []
    service.stopService().addBoth(stopped.append)
    clock.advance(24.9)
    assert stopped == []
    clock.advance(0.2)
    assert stopped == [None]
    assert spool.stopped_with == [0.0]
    assert events[-2:] == ["closed", "clean exit"]
