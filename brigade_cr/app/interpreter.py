"""
The interpreter's settings while the gateway runs: the thread switch
interval (``SwitchInterval``) and the cyclic garbage collector
(``Collector``).

The switch interval
===================

The spool's file steps run in threads, and each system call they make (an
fsync, an open, a rename) gives up the interpreter's lock and must take it
back from the reactor afterwards. A thread that wants the lock waits up to
the switch interval (CPython's default: 5 ms) before the reactor is asked
to let go, so on a busy reactor a record's five calls could cost it tens of
milliseconds of waiting and keep the writer from keeping up with a burst
(docs/performance.md, "The writer waited for the interpreter"). A shorter
interval bounds each wait; it costs nothing while only one thread runs.

The collector
=============

Every full collection walks every tracked object that survived the younger
ones, and some 70,000 of them are the start-up's (modules, classes, the
configuration), which live as long as the process. A request leaves no
reference cycle of its own (``web/routes.py``), so a collection finds
little, but with CPython's default young threshold (700 allocations) the
collector ran every few requests, and each full collection stopped the
reactor for up to 90 ms while it walked that heap (docs/performance.md,
"Batch files, and the collector once the cycle was gone"). Once the
services have started, ``Collector`` moves what exists into the permanent
generation (``gc.freeze``), so full collections walk only what was made
since, and raises the young threshold, so young collections come less
often. Cycles are still collected, only less often.
"""

from __future__ import annotations

import gc
import sys
from types import ModuleType
from typing import Callable

from twisted.application.service import Service

# Seconds. One millisecond bounds a writer's wait per call; the price is a
# forced switch of the reactor's thread per wait, only while a writer waits.
SWITCH_INTERVAL = 0.001
# Allocations (less deallocations) between young collections; CPython's
# default is 700. 10,000 made the young collections six times cheaper in
# all but cost 1.5 MiB of RSS (the cyclic garbage left waiting, and the
# arenas it keeps), with RSS at its target's edge; 2,000 keeps RSS within
# 0.3 MiB of the default's (docs/performance.md, "Batch files, and the
# collector once the cycle was gone").
YOUNG_THRESHOLD = 2_000


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


class Collector(Service):
    """
    When started: collects once, freezes what survived (``gc.freeze``: the
    start-up's heap is never walked again) and sets the young generation's
    threshold to ``young`` (the older generations' thresholds stay). When
    stopped: puts the thresholds found back and unfreezes. ``collector`` is
    the ``gc`` module but for tests.
    """

    name = "collector"

    def __init__(self, young: int = YOUNG_THRESHOLD, collector: ModuleType = gc) -> None:
        self.young = young
        self._gc = collector
        self._previous: tuple[int, ...] | None = None

    def startService(self) -> None:
        self._previous = tuple(self._gc.get_threshold())
        self._gc.collect()
        self._gc.freeze()
        self._gc.set_threshold(self.young, *self._previous[1:])
        super().startService()

    def stopService(self) -> None:
        super().stopService()
        if self._previous is not None:
            self._gc.set_threshold(*self._previous)
            self._gc.unfreeze()
            self._previous = None
