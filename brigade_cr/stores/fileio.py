"""
Blocking file I/O, and how to run it without blocking the reactor.

The spool and the directory backend write files with fsync; those calls run
in a thread pool (``ThreadedIO``) when serving, or inline (``InlineIO``) in
tests that want everything to fire synchronously.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")


def fsync_directory(directory: Path) -> None:
    """Make a directory's entries (a rename, a link, an unlink) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlockingIO(Protocol):
    """A way to run a blocking function without blocking the reactor."""

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """A Deferred that fires with ``function(*args)``, or fails with what it raised."""


@attrs.define
class ThreadedIO:
    """Blocking calls in ``pool``, their results delivered on ``reactor``: the production ``BlockingIO``."""

    reactor: IReactorFromThreads
    pool: ThreadPool

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self.reactor, self.pool, function, *args)


@attrs.define
class InlineIO:
    """
    Blocking calls made at once on the calling thread: a ``BlockingIO`` for
    tests (everything fires synchronously), never for a serving reactor.
    """

    def run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        try:
            result = function(*args)
        except Exception:
            return fail()
        return succeed(result)
