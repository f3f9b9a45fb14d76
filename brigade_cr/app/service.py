"""
The gateway's lifetime as Twisted services, one per part.

``GatewayServices`` (a ``MultiService``) starts its children in the order
they were added and stops them one after another in the reverse order, each
stop waiting for the one before (a plain ``MultiService`` stops them all at
once). ``compose.make_service`` adds them so that a graceful stop (SIGTERM)
goes: the webhook listener (not ready, no new connections, in-flight
deliveries finish), the spool (drains as far as the deadline allows), the
project watch, the Kubernetes connection pool, the metrics listener. The
whole stop fits in ``--shutdown-timeout`` seconds (``StopDeadline``), well
inside Kubernetes' 30 s grace period; what the spool could not submit is
drained on the next start.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any, Callable, Protocol, Sequence

import attrs
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorFromThreads, IReactorTime
from twisted.logger import Logger

DEFAULT_DRAIN_DEADLINE = 25.0

SignalHandler = Callable[[int, FrameType | None], Any]


class Spool(Protocol):
    """What the spool service needs of a spool (``SpooledBuilds``)."""

    def start(self) -> Deferred[None]: ...

    def stop(self, deadline: float) -> Deferred[None]: ...

    def accepting(self) -> bool: ...


class Deliveries(Protocol):
    """What the webhook listener needs of the web application (``WebhookSite``)."""

    shutting_down: bool

    @property
    def in_flight(self) -> int: ...

    def idle(self) -> Deferred[None]: ...


class Projects(Protocol):
    """What the projects service needs of the project set (``KnownProjects``)."""

    def start(self) -> Deferred[None]: ...

    def stop(self) -> Any: ...


@attrs.define
class StopDeadline:
    """
    The time a graceful stop may take (``--shutdown-timeout``), counted from
    ``begin()``; shared by the services that wait during the stop.
    """

    clock: IReactorTime
    seconds: float = DEFAULT_DRAIN_DEADLINE
    _began: float | None = attrs.field(default=None, init=False)

    def begin(self) -> None:
        """Start counting (once; later calls keep the first start)."""
        if self._began is None:
            self._began = self.clock.seconds()

    def elapsed(self) -> float:
        """Seconds since ``begin()`` (0 before it)."""
        return 0.0 if self._began is None else self.clock.seconds() - self._began

    def left(self) -> float:
        """Seconds left before the deadline, never negative."""
        return max(self.seconds - self.elapsed(), 0.0)


async def _within(clock: IReactorTime, waiting: Deferred[Any], seconds: float) -> bool:
    """Wait for ``waiting`` at most ``seconds``; True if it fired in time."""
    try:
        await waiting.addTimeout(max(seconds, 0.0), clock)
    except Exception:
        return False
    return True


class GatewayServices(MultiService):
    """
    The gateway: logs ``announcements`` and starts each child in order;
    stops each child in reverse order, one at a time, within ``deadline``
    (which the children that wait consult). A child whose stop fails is
    logged, the others are still stopped, and ``failed`` is called (the
    process then exits non-zero).
    """

    log = Logger()

    def __init__(
        self,
        deadline: StopDeadline,
        announcements: Sequence[str] = (),
        failed: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__()
        self.deadline = deadline
        self.announcements = list(announcements)
        self.failed = failed

    def startService(self) -> None:
        for text in self.announcements:
            self.log.info("{text}", text=text)
        super().startService()

    def stopService(self) -> Deferred[None]:
        # Not MultiService.stopService: that stops every child at once.
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.deadline.begin()
        clean = True
        child: IService
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                clean = False
                self.log.failure("Stopping the {service} service failed", service=child.name)
        self.log.info("Stopped after {seconds:.1f}s", seconds=self.deadline.elapsed())
        if not clean and self.failed is not None:
            self.failed()


@attrs.define(eq=False)
class WebhookListener(Service):
    """
    The webhook port (``port``, bound at start-up, not accepting) serving
    ``site``. Starts accepting once ``ready()`` fires (the spool has
    recovered). Its stop: readiness false and new deliveries refused, the
    port closed, then the deliveries in flight waited for until
    ``deadline``.
    """

    site: Deliveries
    port: IService
    deadline: StopDeadline
    ready: Callable[[], Deferred[None]] = lambda: succeed(None)

    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.ready().addCallback(self._accept)

    def _accept(self, _: object) -> None:
        # The stop may have begun before the spool recovered.
        if self.running:
            self.port.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        self.site.shutting_down = True
        self.log.info("Shutting down: no new connections, finishing {count} delivery(ies)", count=self.site.in_flight)
        await maybeDeferred(self.port.stopService)
        if not await _within(self.deadline.clock, self.site.idle(), self.deadline.left()):
            self.log.warn("Shutdown deadline passed with {count} delivery(ies) in flight", count=self.site.in_flight)


@attrs.define(eq=False)
class SpoolService(Service):
    """
    Starts ``spool`` (lock, recover, drain); ``recovered()`` fires once it
    accepts. A spool that cannot start is logged as critical and
    ``failed()`` is called (end the process, non-zero). The stop drains for
    what is left of ``deadline``.
    """

    spool: Spool
    deadline: StopDeadline
    failed: Callable[[], Any]
    _started: bool = attrs.field(default=False, init=False)
    _waiting: list[Deferred[None]] = attrs.field(factory=list, init=False)

    log = Logger()

    def startService(self) -> None:
        super().startService()
        Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        try:
            await self.spool.start()
        except Exception as e:
            self.log.critical("Cannot start the spool, so not accepting deliveries: {error}; check --spool", error=e)
            self.failed()
            return
        self._started = True
        waiting, self._waiting = self._waiting, []
        for waiter in waiting:
            waiter.callback(None)

    def recovered(self) -> Deferred[None]:
        """Fires once the spool accepts deliveries; never if its start fails."""
        if self._started:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiting.append(waiter)
        return waiter

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self.spool.stop(self.deadline.left())


@attrs.define(eq=False)
class ProjectsService(Service):
    """Starts and stops what keeps the known projects (a Kubernetes watch, a directory rescan)."""

    projects: Projects

    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.projects.start().addErrback(lambda failure: self.log.failure("Cannot start the project watch", failure))

    def stopService(self) -> Any:
        super().stopService()
        return self.projects.stop()


@attrs.define(eq=False)
class ClosePool(Service):
    """Closes the backend's pooled connections (``close()``) when it stops."""

    close: Callable[[], Any]

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        return maybeDeferred(self.close)


@attrs.define(eq=False)
class StopOnSignal(Service):
    """
    brigade-cr's own SIGTERM (and SIGINT) handler: stops the reactor, so
    that twistd stops the services gracefully and, once they have stopped,
    exits 0.

    The reactor's own handlers (installed while it starts) record the signal
    and twistd then re-raises it when the reactor has stopped (exit status
    143 for SIGTERM). This service installs its handler with ``install``
    (``signal.signal``) once the reactor runs (``callWhenRunning``: after
    the reactor's own, which it never installs again), so no signal is
    recorded. SIGINT is taken over only where the reactor handles it (its
    ``sigInt``), not where it is ignored. A second signal during the stop is
    logged and changes nothing.
    """

    core: IReactorCore
    threads: IReactorFromThreads
    install: Callable[[int, SignalHandler], Any] = signal.signal
    current: Callable[[int], Any] = signal.getsignal
    _stopping: bool = attrs.field(default=False, init=False)

    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.core.callWhenRunning(self._install)

    def _install(self) -> None:
        self.install(signal.SIGTERM, self._received)
        if getattr(self.current(signal.SIGINT), "__self__", None) is self.core:
            self.install(signal.SIGINT, self._received)

    def _received(self, number: int, frame: FrameType | None = None) -> None:
        name = signal.Signals(number).name
        if self._stopping:
            self.log.info("Received {signal} while shutting down; still finishing", signal=name)
            return
        self._stopping = True
        self.log.info("Received {signal}, shutting down gracefully", signal=name)
        # As the reactor's own handler does: a signal may arrive in the middle
        # of anything, so the stop is handed to the reactor's loop.
        self.threads.callFromThread(self._stop_reactor)

    def _stop_reactor(self) -> None:
        try:
            self.core.stop()
        except ReactorNotRunning:
            pass  # already stopping (a spool that could not start)
