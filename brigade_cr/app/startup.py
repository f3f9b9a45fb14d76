"""
Fatal start-up problems, found before the reactor runs and reported in one
line naming the problem and the option to change.

twistd calls the plugin's ``makeService`` before it starts logging, forks or
writes a PID file; a ``SystemExit`` with a message raised there makes the
process print that message alone (no traceback) and exit with status 1. So
everything that can make a start fail for good is tried there: the listening
ports are bound (and held, not yet accepting, until the service starts them),
the spool directory is created and its lock tried.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import functools
import os
import sys
from pathlib import Path
from typing import Any, Callable, ParamSpec, TypeVar

import attrs
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReadDescriptor
from twisted.python import usage
from twisted.python.failure import Failure

P = ParamSpec("P")
R = TypeVar("R")

# The spool's lock file (spool.py's LOCK_FILE), tried here before the spool starts.
SPOOL_LOCK = "spool.lock"


class StartupError(Exception):
    """A start-up problem the operator must fix; ``args[0]`` is the one line to print."""


def fails_clearly(make_service: Callable[P, R]) -> Callable[P, R]:
    """
    Wrap ``makeService`` so that a ``StartupError`` or ``usage.UsageError``
    becomes ``SystemExit("brigade-cr: <message>")``: twistd prints the line
    and exits 1, with no traceback.
    """

    @functools.wraps(make_service)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return make_service(*args, **kwargs)
        except (StartupError, usage.UsageError) as e:
            raise SystemExit(f"brigade-cr: {e}") from None

    return wrapper


def _reason(error: BaseException) -> str:
    return _describe(error).rstrip(".")


def _describe(error: BaseException) -> str:
    if isinstance(error, CannotListenError):
        cause = error.socketError
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror[:1].lower() + cause.strerror[1:]
        return str(cause)
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return str(error) or type(error).__name__


def _pause(reactor: Any, port: Any) -> None:
    # A bound port accepts as soon as the reactor runs; until the service
    # starts (after the spool's recovery) it must not.
    if IReactorFDSet.providedBy(reactor) and IReadDescriptor.providedBy(port):
        reactor.removeReader(port)


def _resume(reactor: Any, port: Any) -> None:
    if IReactorFDSet.providedBy(reactor) and IReadDescriptor.providedBy(port):
        reactor.addReader(port)


@attrs.define(eq=False)
class BoundPort(Service):
    """
    A listening port bound when it was made, accepting connections only
    from ``startService`` on; ``stopService`` closes it (and fires once it
    is closed).
    """

    reactor: Any
    port: IListeningPort
    _closed: bool = attrs.field(default=False, init=False)

    def startService(self) -> None:
        super().startService()
        _resume(self.reactor, self.port)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._closed:
            return succeed(None)
        self._closed = True
        try:
            closing = self.port.stopListening()
        except Exception:
            return fail()
        # IListeningPort.stopListening may return a Deferred or None.
        return closing if isinstance(closing, Deferred) else succeed(None)


def bind(option: str, description: str, factory: Any, reactor: Any) -> BoundPort:
    """
    Parse the endpoint ``description`` (given as ``option``) and bind it
    now. Returns a ``BoundPort`` that accepts once started. Raises
    ``StartupError`` naming ``option`` for a description that is not an
    endpoint, a port in use, an address that cannot be bound, or an endpoint
    that does not listen at once.
    """
    try:
        endpoint = endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError, OSError) as e:
        raise StartupError(
            f"{option} {description!r} is not a valid endpoint description ({_reason(e)}); "
            f"fix {option} (e.g. {option} tcp:8000)"
        ) from None
    results: list[Any] = []
    listening = endpoint.listen(factory)
    listening.addBoth(results.append)
    if not results:
        listening.cancel()
        raise StartupError(f"{option} {description!r} did not start listening at once; use another {option}")
    result = results[0]
    if isinstance(result, Failure):
        error = result.value
        assert error is not None
        if isinstance(error, CannotListenError) and getattr(error.socketError, "errno", None) == errno.EADDRINUSE:
            raise StartupError(
                f"cannot listen on {option} {description}: address already in use; choose another {option}"
            )
        raise StartupError(f"cannot listen on {option} {description}: {_reason(error)}; change {option}")
    _pause(reactor, result)
    return BoundPort(reactor, result)


def check_spool(directory: Path) -> None:
    """
    Create the spool ``directory`` if need be and try its lock, now: raises
    ``StartupError`` naming ``--spool`` when it cannot be created, is not a
    writable directory, or another process holds ``spool.lock``. The lock is
    released again; the spool takes it when it starts.
    """
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise StartupError(f"--spool {directory}: cannot create the directory: {_reason(e)}; change --spool") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(f"--spool {directory}: the directory is not writable; change --spool or its permissions")
    try:
        fd = os.open(directory / SPOOL_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise StartupError(f"--spool {directory}: cannot open {SPOOL_LOCK}: {_reason(e)}; change --spool") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
                raise StartupError(
                    f"--spool {directory} is in use by another process (pid {holder}, holding {SPOOL_LOCK}); "
                    "each spool directory takes one gateway: give this one another --spool"
                ) from None
            raise StartupError(f"--spool {directory}: cannot lock {SPOOL_LOCK}: {_reason(e)}; change --spool") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def exit_nonzero_at_end() -> None:
    """
    Make the process exit with status 1 once twistd has finished (its
    reactor stopped, its PID file removed, its log closed), for a start
    that failed after the reactor ran. twistd itself exits 0 when its
    reactor stops, and offers no public way to say otherwise.
    """

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(1)

    atexit.register(leave)
