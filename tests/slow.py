"""
What makes a test C{slow}, and the guard that keeps the marker honest.

A test is C{slow} when it starts a process (twistd, the fake Kubernetes API
process, kubectl, a spool writer) or opens a real listening socket (a
loopback listener in the reactor, a port held open). Everything else is the
fast run (C{pytest -m "not slow"}), which must stay quick and must not
depend on the machine's processes or ports.

A test becomes C{slow} in one of three ways:

  - by using a fixture decorated with L{starts_process} (directly or
    through other fixtures); C{tests/conftest.py} marks it at collection;
  - by C{pytestmark = pytest.mark.slow} in a module of end-to-end tests;
  - by C{@pytest.mark.slow} on the test itself.

L{guarded} is the backstop: while a test that is not marked C{slow} is set
up, run or torn down, starting a process or binding/listening on a socket
raises L{NotMarkedSlow} and fails the test, even if the code under test
swallowed the exception.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable, TypeVar

import pytest

__all__ = ["NotMarkedSlow", "guarded", "is_process_fixture", "starts_process"]

F = TypeVar("F", bound=Callable[..., Any])

_FLAG = "_brigade_cr_starts_process"


def starts_process(fixture_function: F) -> F:
    """
    Flag a fixture function as one that starts a process or a real
    listener: every test that uses it (even indirectly) is marked C{slow}.
    Put it under C{@pytest.fixture}.
    """
    setattr(fixture_function, _FLAG, True)
    return fixture_function


def is_process_fixture(fixture_function: object) -> bool:
    """Whether L{starts_process} flagged this fixture function."""
    return bool(getattr(fixture_function, _FLAG, False))


class NotMarkedSlow(RuntimeError):
    """A test that is not marked C{slow} tried to start a process or to listen."""


# Every way a test here can start a process (subprocess.run/Popen, twisted's
# spawnProcess, os.spawn*, multiprocessing all end in one of these) and every
# way it can take a port (listenTCP/listenSSL/endpoints/socketserver bind and
# listen through socket.socket).
_PROCESS_STARTERS: list[tuple[Any, str]] = [
    (subprocess.Popen, "_execute_child"),
    (os, "fork"),
    (os, "forkpty"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
]
_LISTENERS: list[tuple[Any, str]] = [(socket.socket, "bind"), (socket.socket, "listen")]


@contextmanager
def guarded(nodeid: str, phase: str) -> Iterator[None]:
    """
    For the duration of one phase of a test that is not C{slow}: refuse to
    start a process or to bind/listen; on exit, fail the test (with
    C{pytest.fail}) if it tried, whatever the code under test did with the
    L{NotMarkedSlow} it got.
    """
    attempts: list[str] = []

    def refusing(what: str) -> Callable[..., Any]:
        def refuse(*args: object, **kwargs: object) -> Any:
            attempts.append(what)
            raise NotMarkedSlow(
                f"{nodeid} {what} in {phase} but is not marked slow: mark it @pytest.mark.slow "
                "(or flag the fixture with tests.slow.starts_process)"
            )

        return refuse

    with pytest.MonkeyPatch.context() as patch:
        for owner, name in _PROCESS_STARTERS:
            if hasattr(owner, name):
                patch.setattr(owner, name, refusing(f"starts a process ({name})"))
        for owner, name in _LISTENERS:
            patch.setattr(owner, name, refusing(f"opens a real socket ({name})"))
        try:
            yield
        finally:
            if attempts:
                pytest.fail(
                    f"{nodeid} is not marked slow but {attempts[0]} in {phase}: "
                    "mark it @pytest.mark.slow (see tests/slow.py)",
                    pytrace=False,
                )
