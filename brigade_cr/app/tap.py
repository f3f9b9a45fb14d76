"""
The module the twistd plugin names (``twisted/plugins/brigade_cr_plugin.py``):
its ``Options`` and ``makeService``, the one place that takes the global
reactor and the process environment and hands them to
``compose.make_service``.
"""

from __future__ import annotations

import os
from typing import Mapping

from twisted.application.service import IService

from brigade_cr.app import options as _options
from brigade_cr.app.compose import make_service
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
    exits 1).
    """
    from twisted.internet import reactor

    return make_service(options, reactor, os.environ)
