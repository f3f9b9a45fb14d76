"""
The gateway's lifetime: start in the right order, stop gracefully (P6).

On SIGTERM twistd stops this service and waits for it: it reports not-ready,
stops accepting connections, lets in-flight deliveries finish (each durably
acknowledged or refused), flushes the spool as far as the deadline allows,
and closes the Kubernetes connection pool. The whole stop fits in
``drain_deadline`` seconds, well inside Kubernetes' 30 s grace period; what
the spool could not submit is drained on the next start.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from brigade_cr.web.routes import WebhookSite

DEFAULT_DRAIN_DEADLINE = 25.0


class Spool(Protocol):
    """What the service needs of a spool (``SpooledBuilds``)."""

    def start(self) -> Deferred[None]: ...

    def stop(self, deadline: float) -> Deferred[None]: ...

    def accepting(self) -> bool: ...


class Background(Protocol):
    """A background task with a synchronous start and stop (the project watch)."""

    def start(self) -> Any: ...

    def stop(self) -> Any: ...


async def _within(clock: IReactorTime, waiting: Deferred[Any], seconds: float) -> bool:
    """Wait for ``waiting`` at most ``seconds``; True if it fired in time."""
    try:
        await waiting.addTimeout(max(seconds, 0.0), clock)
    except Exception:
        return False
    return True


@attrs.define(eq=False)
class GatewayService(Service):
    """
    Runs the site's listening service, the spool and the project watch, and
    stops them in order.
    """

    site: WebhookSite
    listening: IService
    clock: IReactorTime
    spool: Spool | None = None
    background: list[Background] = attrs.Factory(list)
    close: Callable[[], Any] | None = None
    announcements: list[str] = attrs.Factory(list)
    drain_deadline: float = DEFAULT_DRAIN_DEADLINE
    stop_reactor: Callable[[], Any] | None = None
    # Called once a stop has finished in order: twistd then exits 0 rather
    # than re-raising the SIGTERM that stopped it.
    stopped_cleanly: Callable[[], Any] | None = None
    # Called when the start failed for good (the spool would not start,
    # although start-up had tried its lock): the process must then exit
    # non-zero once it has stopped.
    failed: Callable[[], Any] | None = None
    # Listeners with no part in the drain (metrics): up from the start, down last.
    side_listening: list[IService] = attrs.Factory(list)

    log = Logger()

    def startService(self) -> None:
        super().startService()
        for text in self.announcements:
            self.log.info("{text}", text=text)
        for task in self.background:
            task.start()
        for service in self.side_listening:
            service.startService()
        if self.spool is None:
            self.listening.startService()
            return
        Deferred.fromCoroutine(self._start_spool())

    async def _start_spool(self) -> None:
        assert self.spool is not None
        try:
            await self.spool.start()
        except Exception as e:
            self.log.critical("Cannot start the spool, so not accepting deliveries: {error}; check --spool", error=e)
            if self.failed is not None:
                self.failed()
            if self.stop_reactor is not None:
                self.stop_reactor()
            return
        if self.running:
            self.listening.startService()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        started = self.clock.seconds()

        def left() -> float:
            return self.drain_deadline - (self.clock.seconds() - started)

        self.site.shutting_down = True
        self.log.info("Shutting down: no new connections, finishing {count} delivery(ies)", count=self.site.in_flight)
        if self.listening.running:
            await maybeDeferred(self.listening.stopService)
        if not await _within(self.clock, self.site.idle(), left()):
            self.log.warn("Shutdown deadline passed with {count} delivery(ies) in flight", count=self.site.in_flight)
        if self.spool is not None:
            await self.spool.stop(max(left(), 0.0))
        for task in self.background:
            task.stop()
        if self.close is not None:
            await maybeDeferred(self.close)
        for service in self.side_listening:
            if service.running:
                await maybeDeferred(service.stopService)
        self.log.info("Stopped after {seconds:.1f}s", seconds=self.clock.seconds() - started)
        if self.stopped_cleanly is not None:
            self.stopped_cleanly()
