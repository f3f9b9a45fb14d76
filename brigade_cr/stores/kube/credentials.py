"""
Bearer-token sources for the Kubernetes client.

A token source answers ``token()`` with a Deferred, so that a source may do
work (run an exec plugin) without blocking the reactor, and forgets its
token on ``invalidate()``, which the client calls after a 401 before it
retries the request once.

- ``NoToken``: no ``Authorization`` header (client certificates, or none).
- ``StaticToken``: a token from the kubeconfig.
- ``FileToken``: ``tokenFile`` and the in-cluster service-account token,
  re-read every ``period`` seconds (by the injected clock) and right after
  ``invalidate()``. Hand-written: the ``kubernetes`` package reads a
  ``tokenFile`` once, and its in-cluster refresh hook re-reads only once a
  wall-clock minute has passed, never after a 401 (``docs/architecture.md``).
  The file is read on the reactor: it is a few hundred bytes, normally on a
  tmpfs the kubelet projects, and a read costs microseconds, far less than a
  thread hand-off.
- ``ExecToken``: a client-go exec credential plugin, run by the
  ``kubernetes`` package's ``ExecProvider`` (a blocking subprocess) in a
  thread (``run_in_thread``), never on the reactor; its token cached until
  ``status.expirationTimestamp`` (or until ``invalidate()`` when there is
  none). Only ``status.token`` is supported: a plugin that answers with a
  client certificate instead fails with a clear ``KubeCredentialError``.

No source ever logs a token, and ``repr`` of each leaves it out.
"""

from __future__ import annotations

import re
from typing import Any, Callable, ClassVar

import attrs
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.dateutil import parse_rfc3339
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from brigade_cr.stores.kube.config import (
    BearerToken,
    BearerTokenFile,
    ExecPlugin,
    KubeConfig,
    NoCredentials,
)

DEFAULT_FILE_PERIOD = 60.0
DEFAULT_EXEC_TIMEOUT = 30.0

# Runs a blocking callable off the reactor; fires with its result.
ThreadRunner = Callable[[Callable[[], Any]], "Deferred[Any]"]


class KubeCredentialError(Exception):
    """
    No token could be obtained (unreadable token file, failing exec plugin).

    ``reason`` is safe to log: it names files and commands, never a token.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ITokenSource(Interface):
    """Where the client gets the bearer token for each request."""

    def token() -> Deferred[str | None]:
        """
        The current bearer token. Fires with a string, or ``None`` when no
        ``Authorization`` header should be sent; fails with
        ``KubeCredentialError`` when a token is required but cannot be had.
        """

    def invalidate() -> None:
        """
        Forget the cached token: the API server rejected it (401). The next
        ``token()`` re-reads or re-runs its source.
        """


@implementer(ITokenSource)
@attrs.define
class NoToken:
    """Send no ``Authorization`` header."""

    def token(self) -> Deferred[str | None]:
        """Fires with ``None``."""
        return succeed(None)

    def invalidate(self) -> None:
        """Nothing to forget."""


@implementer(ITokenSource)
@attrs.define
class StaticToken:
    """A fixed token: ``invalidate()`` cannot help, so it does nothing."""

    value: str = attrs.field(repr=False)

    def token(self) -> Deferred[str | None]:
        """Fires with the token."""
        return succeed(self.value)

    def invalidate(self) -> None:
        """A static token cannot be refreshed."""


@implementer(ITokenSource)
@attrs.define
class FileToken:
    """
    A token kept in a file that something else rotates (the kubelet's
    projected service-account token, a ``tokenFile``).

    The file is re-read when ``period`` seconds of ``clock`` have passed since
    the last read, and on the first ``token()`` after ``invalidate()``. While
    the file cannot be read (or is empty) the last good token is kept, then
    ``fallback`` (a static ``token`` given next to ``tokenFile``); with
    neither, ``token()`` fails with ``KubeCredentialError``.
    """

    path: str
    clock: IReactorTime
    period: float = DEFAULT_FILE_PERIOD
    fallback: str | None = attrs.field(default=None, repr=False)
    _cached: str | None = attrs.field(default=None, init=False, repr=False)
    _read_at: float | None = attrs.field(default=None, init=False)

    log: ClassVar[Logger] = Logger()

    def token(self) -> Deferred[str | None]:
        """
        Fires with the file's token (stripped of surrounding whitespace), or
        fails with ``KubeCredentialError`` when none is available.
        """
        now = self.clock.seconds()
        if self._read_at is None or now - self._read_at >= self.period:
            self._refresh(now)
        value = self._cached if self._cached is not None else self.fallback
        if value is None:
            return fail(KubeCredentialError(f"token file {self.path} is unreadable or empty"))
        return succeed(value)

    def invalidate(self) -> None:
        """Re-read the file on the next ``token()``."""
        self._read_at = None

    def _refresh(self, now: float) -> None:
        self._read_at = now
        try:
            with open(self.path, "rb") as f:
                text = f.read().decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            self.log.warn(
                "Cannot read token file {path}: {error}",
                path=self.path,
                error=getattr(e, "strerror", None) or type(e).__name__,
                keeping_previous=self._cached is not None,
            )
            return
        if not text:
            self.log.warn("Token file {path} is empty", path=self.path)
            return
        if text != self._cached and self._cached is not None:
            self.log.info("Token file {path} changed; using the new token", path=self.path)
        self._cached = text


@implementer(ITokenSource)
@attrs.define
class ExecToken:
    """
    A token from a client-go exec credential plugin (``users[].user.exec``),
    run by the ``kubernetes`` package's ``ExecProvider``: the configured
    ``command`` and ``args``, the environment of the process at start-up plus
    the configured ``env``, ``KUBERNETES_EXEC_INFO`` (with ``spec.cluster``
    when ``provideClusterInfo``), in the kubeconfig's directory.

    Every run happens in ``run_in_thread`` (``ExecProvider.run`` blocks until
    the plugin exits); concurrent ``token()`` calls share one run. A run that
    has not answered within ``timeout`` seconds of ``clock`` fails the
    callers waiting on it (the library has no timeout of its own, so the
    thread stays busy until the plugin exits; its late answer is still
    cached).

    The token is cached until ``status.expirationTimestamp`` less
    ``expiry_margin`` seconds (so a request does not leave with a token that
    expires in flight), or until ``invalidate()`` when the plugin gives no
    expiry.
    """

    plugin: ExecPlugin
    clock: IReactorTime
    run_in_thread: ThreadRunner = attrs.field(repr=False)
    timeout: float = DEFAULT_EXEC_TIMEOUT
    expiry_margin: float = 10.0
    _cached: str | None = attrs.field(default=None, init=False, repr=False)
    _expires: float | None = attrs.field(default=None, init=False)
    _running: bool = attrs.field(default=False, init=False)
    _waiters: list[Deferred[str | None]] = attrs.field(factory=list, init=False, repr=False)

    log: ClassVar[Logger] = Logger()

    def token(self) -> Deferred[str | None]:
        """
        Fires with the plugin's ``status.token``. Fails with
        ``KubeCredentialError`` when the plugin cannot run, fails, times out,
        or prints something that is not a matching ``ExecCredential`` with a
        token.
        """
        if self._cached is not None and (
            self._expires is None or self.clock.seconds() < self._expires - self.expiry_margin
        ):
            return succeed(self._cached)
        waiter: Deferred[str | None] = Deferred(self._forget)

        def expire() -> None:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
                waiter.errback(
                    KubeCredentialError(f"exec plugin {self.plugin.command!r} did not finish within {self.timeout:g}s")
                )

        timer: IDelayedCall = self.clock.callLater(self.timeout, expire)

        def settled(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(settled)
        self._waiters.append(waiter)
        if not self._running:
            self._running = True
            self.run_in_thread(self._run_blocking).addCallback(self._got).addBoth(self._finished)
        return waiter

    def invalidate(self) -> None:
        """Run the plugin again on the next ``token()``."""
        self._cached = None
        self._expires = None

    def _forget(self, waiter: Deferred[str | None]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def _finished(self, result: str | Failure) -> None:
        self._running = False
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)
        if isinstance(result, Failure) and not isinstance(result.value, KubeCredentialError):
            self.log.failure("Exec credential plugin run failed", result)

    def _run_blocking(self) -> Any:
        """In a thread: the plugin's ``status``, or ``KubeCredentialError``."""
        try:
            return self.plugin.provider.run()
        except ConfigException as e:
            raise KubeCredentialError(f"exec plugin {self.plugin.command!r}: {_safe_exec_reason(str(e))}") from None
        except OSError as e:
            raise KubeCredentialError(
                f"exec plugin {self.plugin.command!r} could not start: {e.strerror or type(e).__name__}"
            ) from None

    def _got(self, status: Any) -> str:
        name = self.plugin.command
        if not isinstance(status, dict):
            raise KubeCredentialError(f"exec plugin {name!r} gave no status")
        token = status.get("token")
        if not isinstance(token, str) or not token:
            if status.get("clientCertificateData"):
                raise KubeCredentialError(f"exec plugin {name!r} gave a client certificate; only tokens are supported")
            raise KubeCredentialError(f"exec plugin {name!r} gave no token")
        expires = None
        stamp = status.get("expirationTimestamp")
        if stamp:
            try:
                expires = parse_rfc3339(str(stamp)).timestamp()
            except (ValueError, AttributeError, TypeError):
                # ValueError from kubernetes 37; older parsers fail on a None match.
                raise KubeCredentialError(f"exec plugin {name!r} gave an unreadable expirationTimestamp") from None
        self._cached, self._expires = token, expires
        self.log.info("Exec credential plugin {command} gave a token", command=name, expires=expires)
        return token


# ExecProvider's messages append the plugin's stderr (which may echo anything
# the plugin saw) or quote its output: keep only the library's own words.
_EXIT = re.compile(r"exec: process returned (-?\d+)")


def _safe_exec_reason(message: str) -> str:
    exited = _EXIT.match(message)
    if exited:
        return f"exited with code {exited.group(1)}"
    if message.startswith("exec: failed to decode process output"):
        return "did not print JSON"
    if message.startswith("exec: malformed response"):
        return message[len("exec: ") :][:80]
    if message.startswith("exec: plugin api version"):
        return "answered a different apiVersion than configured"
    return "failed"


def default_thread_runner(reactor: Any) -> ThreadRunner:
    """Runs a callable in ``reactor``'s thread pool (``deferToThreadPool``)."""

    def run(f: Callable[[], Any]) -> Deferred[Any]:
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    return run


def token_source_for(
    config: KubeConfig,
    reactor: Any,
    run_in_thread: ThreadRunner | None = None,
    file_period: float = DEFAULT_FILE_PERIOD,
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
) -> NoToken | StaticToken | FileToken | ExecToken:
    """
    The token source ``config.credentials`` describes. ``reactor`` provides
    ``IReactorTime``; an exec plugin runs in ``run_in_thread`` (the
    reactor's thread pool when ``None``).
    """
    credentials = config.credentials
    if isinstance(credentials, BearerToken):
        return StaticToken(credentials.token)
    if isinstance(credentials, BearerTokenFile):
        return FileToken(credentials.path, reactor, file_period, credentials.fallback)
    if isinstance(credentials, ExecPlugin):
        runner = run_in_thread if run_in_thread is not None else default_thread_runner(reactor)
        return ExecToken(credentials, reactor, runner, exec_timeout)
    assert isinstance(credentials, NoCredentials)
    return NoToken()
