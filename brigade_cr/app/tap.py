"""
The module the twistd plugin names (``twisted/plugins/brigade_cr_plugin.py``):
its ``Options`` and ``makeService``, the one place that takes the global
reactor and the process environment and hands them to
``compose.make_service``.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Mapping

from twisted.application.service import IService, MultiService
from twisted.logger import ILogObserver
from twisted.python.components import Componentized
from twisted.python.logfile import LogFile

from brigade_cr.app import logs
from brigade_cr.app import options as _options
from brigade_cr.app.compose import make_service
from brigade_cr.app.drain import make_drain_service
from brigade_cr.app.interpreter import Collector, SwitchInterval
from brigade_cr.app.logwriter import TurnWriter
from brigade_cr.app.startup import fails_clearly

__all__ = ["Options", "makeService"]


class Options(_options.Options):
    """
    The plugin's options as twistd makes them (``ServiceMaker.options``,
    called with no arguments): over this process's environment.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(os.environ if environ is None else environ)


@fails_clearly
def makeService(options: _options.Options) -> IService:
    """
    The gateway's services for ``options`` on the global reactor (see
    ``compose.make_service``). A problem that makes the start fail for good
    is found here, before the reactor runs, and raised as ``SystemExit``
    with one line naming it and the option to change (twistd prints it and
    exits 1). With ``--drain-only``, the one-shot drain of ``--spool``
    instead (see ``drain.make_drain_service``). Either way, while they run
    the interpreter's switch interval is ``interpreter.SWITCH_INTERVAL`` and
    its collector is set as ``interpreter.Collector`` says.
    """
    from twisted.internet import reactor

    compose = make_drain_service if options["drain-only"] else make_service
    out = _log_file(options)
    writer = None if out is None else TurnWriter(out, reactor)
    observer = None if writer is None else _observer(options, writer)
    services = _Logging(compose(options, reactor, os.environ), observer)
    if writer is not None:
        # Added after the gateway's own services, so stopped before them:
        # what they log while they stop is written at once.
        writer.setServiceParent(services)
    # Process-wide, so set here beside the global reactor: the spool's
    # threads take the interpreter back from the reactor sooner.
    SwitchInterval().setServiceParent(services)
    # Last, so started once everything the start-up made exists: that is
    # what it freezes.
    Collector().setServiceParent(services)
    return services


def _log_file(options: _options.Options) -> IO[str] | None:
    # The file twistd itself would log to: --logfile, else standard output
    # with --nodaemon, else twistd.log. None (twistd's own choice stands)
    # with --logger or --syslog.
    parent = getattr(options, "parent", None)
    if parent is not None and (parent.get("logger") or parent.get("syslog")):
        return None
    logfile = parent.get("logfile") if parent is not None else None
    daemon = parent is not None and not parent.get("nodaemon")
    if logfile and logfile != "-":
        out: IO[str] = LogFile.fromFullPath(logfile)
    elif daemon and not logfile:
        out = LogFile.fromFullPath("twistd.log")
    else:
        out = sys.stdout
    return out


def _observer(options: _options.Options, out: logs.LineOutput) -> ILogObserver:
    return logs.observer(out, options["log-format"], options["log-level"])


class _Logging(MultiService):
    """
    The gateway's services, which set ``observer`` as the Application's
    ``ILogObserver`` when twistd adds them to it: twistd begins logging to
    that observer (unless ``--logger`` names another).
    """

    def __init__(self, services: IService, observer: ILogObserver | None) -> None:
        super().__init__()
        self.observer = observer
        services.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if self.observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)
