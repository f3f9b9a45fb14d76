"""
The interpreter's thread switch interval while the gateway runs.

The spool's file steps run in threads, and each system call they make (an
fsync, an open, a rename) gives up the interpreter's lock and must take it
back from the reactor afterwards. A thread that wants the lock waits up to
the switch interval (CPython's default: 5 ms) before the reactor is asked
to let go, so on a busy reactor a record's five calls could cost it tens of
milliseconds of waiting and keep the writer from keeping up with a burst
(docs/performance.md, "The writer waited for the interpreter"). A shorter
interval bounds each wait; it costs nothing while only one thread runs.
"""

from __future__ import annotations

import sys
from typing import Callable

from twisted.application.service import Service

# Seconds. One millisecond bounds a writer's wait per call; the price is a
# forced switch of the reactor's thread per wait, only while a writer waits.
SWITCH_INTERVAL = 0.001


class SwitchInterval(Service):
    """
    Sets the switch interval to ``interval`` when started and puts the one
    found back when stopped. ``get`` and ``set`` are the interpreter's
    (``sys.getswitchinterval`` and ``sys.setswitchinterval``) but for tests.
    """

    name = "interpreter"

    def __init__(
        self,
        interval: float = SWITCH_INTERVAL,
        get: Callable[[], float] = sys.getswitchinterval,
        set: Callable[[float], None] = sys.setswitchinterval,
    ) -> None:
        self.interval = interval
        self._get = get
        self._set = set
        self._previous: float | None = None

    def startService(self) -> None:
        self._previous = self._get()
        self._set(self.interval)
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            self._set(self._previous)
            self._previous = None
