"""
``--drain-only``: a one-shot process that drains a spool left behind (a
PersistentVolumeClaim whose pod is gone, a host's old spool directory) into
the backend, then exits.

``make_drain_service(options, reactor, environ)`` composes it from the same
parts as ``compose.make_service``: the backend, the client-side limit, a
``SpooledBuilds`` started by a ``SpoolService`` (so the drain is the serving
one: concurrent, per-record backoff, dead letters), the ``--metrics``
listener if given, the SIGTERM handler. It has no webhook listener (``--port``
is ignored, so the arguments of a serving gateway can be reused as they are)
and no project set: nothing is submitted, the spool only drains.
``DrainUntilEmpty`` stops the reactor once the spool holds no queued record;
after the graceful stop it logs one line saying how the drain ended, and the
process exits 0 if nothing is left, 1 otherwise (a SIGTERM first, a spool
that could not start).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IReactorCore, IReactorThreads, IReactorTime
from twisted.logger import Logger

from brigade_cr.app.backend import choose_backend
from brigade_cr.app.compose import metrics_port, named
from brigade_cr.app.metrics import CountedBuilds, GatewayMetrics
from brigade_cr.app.service import ClosePool, GatewayServices, SpoolService, StopDeadline, StopOnSignal
from brigade_cr.app.startup import StartupError, check_spool, exit_nonzero_at_end
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.stores.fileio import ThreadedIO
from brigade_cr.stores.retry import THROTTLE_TICK, Throttle, ThrottledBuilds
from brigade_cr.stores.spool import SpooledBuilds, SpoolStats


class Draining(Protocol):
    """What ``DrainUntilEmpty`` needs of a spool (``SpooledBuilds``)."""

    def when_empty(self) -> Deferred[None]: ...

    def stats(self) -> SpoolStats: ...


@attrs.define(eq=False)
class DrainUntilEmpty(Service):
    """
    Once the spool has recovered (``recovered()`` fires) and is empty
    (``spool.when_empty()`` fires), stops the reactor (``core``): twistd then
    stops the services gracefully. Its own stop comes after the spool's
    (it is added before the spool), so it sees what the spool left: it logs
    the completion line when no record is left, else one error line with
    the count left and calls ``failed()`` (the process exits 1). A spool that
    never recovered logs its own critical line; this one then says nothing.
    """

    spool: Draining
    directory: str
    recovered: Callable[[], Deferred[None]]
    core: IReactorCore
    failed: Callable[[], Any]
    _started: bool = attrs.field(default=False, init=False)

    log = Logger()

    def startService(self) -> None:
        super().startService()
        self.recovered().addCallback(self._watch)

    def _watch(self, _: object) -> None:
        self._started = True
        self.spool.when_empty().addCallback(self._emptied)

    def _emptied(self, _: object) -> None:
        if not self.running:
            return  # already stopping: the stop reports
        try:
            self.core.stop()
        except ReactorNotRunning:
            pass  # stopping already (a signal in the same turn)

    def stopService(self) -> None:
        super().stopService()
        if not self._started:
            return
        stats = self.spool.stats()
        fields: dict[str, Any] = {
            "directory": self.directory,
            "left": stats.queued,
            "created": stats.created,
            "duplicates": stats.duplicates,
            "dead_lettered": stats.dead_lettered,
            "quarantined": stats.quarantined,
        }
        counts = (
            "{created} build(s) created, {duplicates} duplicate(s), "
            "{dead_lettered} dead-lettered, {quarantined} quarantined"
        )
        if stats.queued == 0:
            self.log.info("Drain complete: the spool {directory} is empty; " + counts, **fields)
            return
        self.log.error(
            "Drain stopped before the spool was empty: {left} record(s) left in {directory} "
            "for the next drain or start; " + counts,
            **fields,
        )
        self.failed()


def make_drain_service(
    options: Mapping[str, Any],
    reactor: Any,
    environ: Mapping[str, str],
    exit_nonzero: Callable[[], Any] = exit_nonzero_at_end,
) -> GatewayServices:
    """
    The services of ``--drain-only`` for parsed ``options``: children named
    ``metrics`` (with ``--metrics``), ``pool`` (Kubernetes), ``drain``,
    ``spool`` and ``signals``, in start order; they stop in reverse order
    (see ``service.py``), the spool draining for up to
    ``--shutdown-timeout`` seconds once a signal arrived.

    ``reactor`` as for ``compose.make_service``. Raises ``StartupError``
    before the reactor runs with ``--no-spool`` (the spool is otherwise
    ``--spool`` or its default), and for the problems ``make_service`` raises it for
    (the backend's configuration, a spool that cannot be created or is
    locked by another process, a ``--metrics`` port that cannot be bound).
    ``--port`` is not bound. ``exit_nonzero`` makes the process exit 1
    once twistd has finished (``startup.exit_nonzero_at_end``).
    """
    spool_dir = options["spool"]
    if not spool_dir or options.get("no-spool"):
        raise StartupError("--drain-only needs a spool to drain: drop --no-spool and give --spool DIR")
    clock = IReactorTime(reactor)
    core = IReactorCore(reactor)
    threads = IReactorThreads(reactor)

    metrics = GatewayMetrics()
    backend = choose_backend(options, reactor, environ, kube_metrics=metrics)
    builds: IBuilds = backend.builds
    if backend.throttled:
        # The drain waits out any pause of the API: nobody is waiting on it.
        throttle = Throttle(clock, per_second=options["kube-qps"], burst=options["kube-burst"], tick=THROTTLE_TICK)
        builds = ThrottledBuilds(builds, throttle, max_pause_wait=None)
    builds = CountedBuilds(builds, metrics.build_created)
    directory = Path(spool_dir)
    check_spool(directory)
    spool = SpooledBuilds(
        directory,
        builds,
        clock,
        ThreadedIO(threads, threads.getThreadPool()),
        max_records=options["spool-max-records"],
        max_bytes=options["spool-max-bytes"],
    )
    metrics.watch_spool(spool.stats)

    def give_up() -> None:
        # The spool could not start after the reactor ran: stop, then exit 1.
        exit_nonzero()
        core.callWhenRunning(core.stop)

    deadline = StopDeadline(clock, options["shutdown-timeout"])
    where = directory.resolve()
    root = GatewayServices(
        deadline,
        [
            backend.description,
            f"--drain-only: draining the spool {where} into the backend, then exiting; "
            "not listening for webhooks (--port is ignored)",
        ],
        failed=exit_nonzero,
    )
    if options["metrics"]:
        listener = metrics_port(options["metrics"], metrics, threads, reactor, bool(options["log-probes"]))
        named("metrics", listener).setServiceParent(root)
    if backend.close is not None:
        named("pool", ClosePool(backend.close)).setServiceParent(root)
    spooling = SpoolService(spool, deadline, failed=give_up)
    drain = DrainUntilEmpty(spool, str(where), spooling.recovered, core, failed=exit_nonzero)
    named("drain", drain).setServiceParent(root)
    named("spool", spooling).setServiceParent(root)
    named("signals", StopOnSignal(core, threads)).setServiceParent(root)
    return root
