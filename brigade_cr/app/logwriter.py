"""
The log file's writes, gathered into one per turn of the reactor.

Every log line was one ``write`` system call on the reactor's thread (twistd's
log file is unbuffered, and Twisted's observers flush after each event): a
delivery's two lines (its access line and its own) were two of the thirteen
calls the reactor's thread made per delivery. Each call gives up the
interpreter's lock, and while the spool's writing threads wait for it the
reactor must then wait to take it back (docs/performance.md, "The log's
writes, and a yardstick that does not drift"). Gathered, the lines of one
turn (every request the turn served) go out in one call when the turn ends.

What is gathered reaches the file within the turn that follows, in the order
it was logged. A process killed outright loses what was gathered in its last
turn; a stop writes it out first.
"""

from __future__ import annotations

import threading
from typing import IO, Any, Callable

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.python import threadable

# Characters gathered before they are written without waiting for the turn's
# end: one turn serving a burst stays within a few writes.
GATHER_LIMIT = 64 * 1024


class TurnWriter(Service):
    """
    A text file (``out``) for log observers: while started, what they write
    from the reactor's thread (``in_reactor_thread``, Twisted's
    ``isInIOThread`` but for tests) is gathered and written to ``out``, then
    flushed, once per turn of ``reactor`` (a ``callLater(0)`` when the first
    line of a turn comes) or once ``GATHER_LIMIT`` characters are waiting.
    Before the start, after the stop, and from any other thread, a write goes
    straight to ``out`` (after whatever was gathered, so the order holds).
    Stopping writes out what is gathered.

    A write to ``out`` that fails when the turn ends drops that turn's lines:
    there is nowhere left to say so, and the reactor must not stop for it.
    """

    name = "log-writer"

    def __init__(
        self,
        out: IO[str],
        reactor: IReactorTime,
        in_reactor_thread: Callable[[], bool] = threadable.isInIOThread,
    ) -> None:
        self.out = out
        self._reactor = reactor
        self._in_reactor_thread = in_reactor_thread
        self._gathered: list[str] = []
        self._size = 0
        self._call: Any = None
        # A thread's write and the turn's end may meet.
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Gather ``text`` for the turn's end, or write it now (see the class docstring)."""
        with self._lock:
            if not (self.running and self._in_reactor_thread()):
                self._write_gathered()
                self.out.write(text)
                self.out.flush()
                return
            self._gathered.append(text)
            self._size += len(text)
            if self._size >= GATHER_LIMIT:
                self._write_gathered()
            elif self._call is None:
                self._call = self._reactor.callLater(0, self._turn_ended)

    def flush(self) -> None:
        """Nothing while gathering (the turn's end flushes); else ``out.flush()``."""
        if not self.running:
            self.out.flush()

    def stopService(self) -> None:
        super().stopService()
        with self._lock:
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._write_or_drop()

    def _turn_ended(self) -> None:
        with self._lock:
            self._write_or_drop()

    def _write_or_drop(self) -> None:
        self._call = None
        try:
            self._write_gathered()
        except Exception:
            self._gathered.clear()
            self._size = 0

    def _write_gathered(self) -> None:
        if not self._gathered:
            return
        text = "".join(self._gathered)
        self._gathered.clear()
        self._size = 0
        self.out.write(text)
        self.out.flush()
