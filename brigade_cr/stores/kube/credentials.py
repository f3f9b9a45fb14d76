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
  ``invalidate()``. The file is read synchronously on the reactor: it is a
  few hundred bytes, normally on a tmpfs the kubelet projects, and a read
  costs microseconds, far less than a thread hand-off.
- ``ExecToken``: a client-go exec credential plugin, run with
  ``reactor.spawnProcess`` (never blocking), bounded by a timeout, its
  ``ExecCredential`` cached until ``status.expirationTimestamp`` (or until
  ``invalidate()`` when there is none). Only ``status.token`` is supported: a
  plugin that answers with a client certificate instead fails with a clear
  ``KubeCredentialError``.

No source ever logs a token, and ``repr`` of each leaves it out.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from datetime import datetime
from typing import Any, ClassVar, Mapping

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IDelayedCall, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
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
# An ExecCredential is a few kilobytes at most.
MAX_EXEC_OUTPUT = 1024 * 1024
_MAX_EXEC_STDERR = 64 * 1024


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


def _kill(process: Any) -> None:
    """SIGKILL a plugin that is still running; one that has exited is fine."""
    try:
        process.signalProcess("KILL")
    except ProcessExitedAlready:
        pass
    except OSError as e:
        ExecToken.log.warn("Cannot kill exec credential plugin: {error}", error=e.strerror)


class _ExecProtocol(ProcessProtocol):
    """Collect a plugin's stdout (bounded) and stderr (bounded, kept private)."""

    def __init__(self, done: Deferred[tuple[bytes, bytes, Failure]], limit: int) -> None:
        self.done = done
        self.limit = limit
        self.stdout: list[bytes] = []
        self.stdout_size = 0
        self.stderr: list[bytes] = []
        self.stderr_size = 0
        self.too_big = False

    def connectionMade(self) -> None:
        # Never interactive: the plugin reads nothing from us.
        assert self.transport is not None
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.stdout_size += len(data)
        if self.stdout_size > self.limit:
            if not self.too_big:
                self.too_big = True
                _kill(self.transport)
            return
        self.stdout.append(data)

    def errReceived(self, data: bytes) -> None:
        if self.stderr_size < _MAX_EXEC_STDERR:
            self.stderr.append(data[: _MAX_EXEC_STDERR - self.stderr_size])
        self.stderr_size += len(data)

    def processEnded(self, reason: Failure) -> None:
        self.done.callback((b"".join(self.stdout), b"".join(self.stderr), reason))


@implementer(ITokenSource)
@attrs.define
class ExecToken:
    """
    A token from a client-go exec credential plugin (``users[].user.exec``).

    The plugin runs as a child process with the configured ``args``, the
    parent's ``environ`` plus the configured ``env``, and
    ``KUBERNETES_EXEC_INFO`` (``spec.interactive`` false; ``spec.cluster``
    when ``provideClusterInfo``). Its stdin is closed at once. A run that
    takes longer than ``timeout`` seconds is killed. Concurrent ``token()``
    calls share one run.

    The token is cached until ``status.expirationTimestamp`` (less
    ``expiry_margin`` seconds, so a request does not leave with a token
    that expires in flight), or until ``invalidate()`` when the plugin gives
    no expiry.
    """

    plugin: ExecPlugin
    reactor: Any  # IReactorProcess and IReactorTime
    environ: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    timeout: float = DEFAULT_EXEC_TIMEOUT
    cluster: Mapping[str, Any] | None = attrs.field(default=None, repr=False)
    expiry_margin: float = 10.0
    max_output: int = MAX_EXEC_OUTPUT
    _cached: str | None = attrs.field(default=None, init=False, repr=False)
    _expires: float | None = attrs.field(default=None, init=False)
    _waiters: list[Deferred[str | None]] | None = attrs.field(default=None, init=False, repr=False)

    log: ClassVar[Logger] = Logger()

    def token(self) -> Deferred[str | None]:
        """
        Fires with the plugin's ``status.token``. Fails with
        ``KubeCredentialError`` when the plugin is missing, fails, times out,
        or prints something that is not a matching ``ExecCredential`` with a
        token.
        """
        if self._cached is not None and (
            self._expires is None or self.reactor.seconds() < self._expires - self.expiry_margin
        ):
            return succeed(self._cached)

        def cancel(d: Deferred[str | None]) -> None:
            if self._waiters is not None and d in self._waiters:
                self._waiters.remove(d)

        waiter: Deferred[str | None] = Deferred(cancel)
        if self._waiters is not None:
            self._waiters.append(waiter)
            return waiter
        self._waiters = [waiter]
        self._run().addBoth(self._finished)
        return waiter

    def invalidate(self) -> None:
        """Run the plugin again on the next ``token()``."""
        self._cached = None
        self._expires = None

    def _finished(self, result: str | Failure) -> None:
        waiters, self._waiters = self._waiters or [], None
        for waiter in waiters:
            if not waiter.called:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
        if isinstance(result, Failure) and not waiters and not isinstance(result.value, KubeCredentialError):
            self.log.failure("Exec credential plugin run failed", result)

    def _executable(self, env: Mapping[str, str]) -> str:
        command = self.plugin.command
        if os.sep in command:
            found: str | None = command if os.access(command, os.X_OK) else None
        else:
            found = shutil.which(command, path=env.get("PATH", os.defpath))
        if found is None:
            hint = f" ({self.plugin.install_hint.strip()})" if self.plugin.install_hint else ""
            raise KubeCredentialError(f"exec plugin {command!r} not found or not executable{hint}")
        return found

    def _env(self) -> dict[str, str]:
        env = dict(self.environ)
        env.update(self.plugin.env)
        spec: dict[str, Any] = {"interactive": False}
        if self.plugin.provide_cluster_info and self.cluster is not None:
            spec["cluster"] = dict(self.cluster)
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {"apiVersion": self.plugin.api_version, "kind": "ExecCredential", "spec": spec}
        )
        return env

    def _run(self) -> Deferred[str]:
        env = self._env()
        try:
            executable = self._executable(env)
        except KubeCredentialError as e:
            return fail(e)
        done: Deferred[tuple[bytes, bytes, Failure]] = Deferred()
        protocol = _ExecProtocol(done, self.max_output)
        try:
            process = self.reactor.spawnProcess(
                protocol,
                executable,
                [executable, *self.plugin.args],
                env={k.encode(): v.encode() for k, v in env.items()},
            )
        except OSError as e:
            return fail(
                KubeCredentialError(
                    f"exec plugin {self.plugin.command!r} could not start: {e.strerror or type(e).__name__}"
                )
            )
        timed_out = []

        def kill() -> None:
            timed_out.append(True)
            _kill(process)

        timer: IDelayedCall = self.reactor.callLater(self.timeout, kill)

        def ended(result: tuple[bytes, bytes, Failure]) -> str:
            if timer.active():
                timer.cancel()
            stdout, _stderr, reason = result
            name = self.plugin.command
            if timed_out:
                raise KubeCredentialError(f"exec plugin {name!r} did not finish within {self.timeout:g}s")
            if protocol.too_big:
                raise KubeCredentialError(f"exec plugin {name!r} printed too much")
            if not isinstance(reason.value, ProcessDone):
                code = reason.value.exitCode if isinstance(reason.value, ProcessTerminated) else None
                # stderr may echo anything the plugin saw: report its size only.
                self.log.warn(
                    "Exec credential plugin {command} failed with exit code {code}",
                    command=name,
                    code=code,
                    stderr_bytes=protocol.stderr_size,
                )
                raise KubeCredentialError(f"exec plugin {name!r} exited with code {code}")
            token, expires = self._parse(stdout)
            self._cached, self._expires = token, expires
            self.log.info(
                "Exec credential plugin {command} gave a token",
                command=name,
                expires=expires,
            )
            return token

        return done.addCallback(ended)

    def _parse(self, stdout: bytes) -> tuple[str, float | None]:
        name = self.plugin.command
        try:
            document = json.loads(stdout)
        except ValueError:
            raise KubeCredentialError(f"exec plugin {name!r} did not print JSON") from None
        if not isinstance(document, dict) or document.get("kind") != "ExecCredential":
            raise KubeCredentialError(f"exec plugin {name!r} did not print an ExecCredential")
        if document.get("apiVersion") != self.plugin.api_version:
            raise KubeCredentialError(
                f"exec plugin {name!r} answered apiVersion "
                f"{str(document.get('apiVersion'))[:80]!r}, configured "
                f"{self.plugin.api_version!r}"
            )
        status = document.get("status")
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
            expires = parse_rfc3339(str(stamp))
            if expires is None:
                raise KubeCredentialError(f"exec plugin {name!r} gave an unreadable expirationTimestamp")
        return token, expires


_RFC3339 = re.compile(r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|z|[+-]\d{2}:\d{2})\Z")


def parse_rfc3339(text: str) -> float | None:
    """
    POSIX seconds of an RFC 3339 timestamp with a zone (``Z`` or an offset,
    any number of fractional digits, as Go writes them), or ``None``.
    """
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    day, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in ("Z", "z") else zone
    micro = (fraction or "")[:6].ljust(6, "0")
    try:
        return datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}").timestamp()
    except ValueError:
        return None


def token_source_for(
    config: KubeConfig,
    reactor: Any,
    environ: Mapping[str, str] | None = None,
    file_period: float = DEFAULT_FILE_PERIOD,
    exec_timeout: float = DEFAULT_EXEC_TIMEOUT,
) -> NoToken | StaticToken | FileToken | ExecToken:
    """
    The token source ``config.credentials`` describes. ``reactor`` provides
    ``IReactorTime`` (and ``IReactorProcess`` for an exec plugin);
    ``environ`` is the environment an exec plugin inherits (``os.environ``
    when ``None``).
    """
    credentials = config.credentials
    if isinstance(credentials, BearerToken):
        return StaticToken(credentials.token)
    if isinstance(credentials, BearerTokenFile):
        return FileToken(credentials.path, reactor, file_period, credentials.fallback)
    if isinstance(credentials, ExecPlugin):
        if not IReactorProcess.providedBy(reactor):
            raise TypeError("an exec credential plugin needs an IReactorProcess")
        cluster: dict[str, Any] = {"server": config.server}
        if config.tls_server_name:
            cluster["tls-server-name"] = config.tls_server_name
        if config.insecure_skip_tls_verify:
            cluster["insecure-skip-tls-verify"] = True
        if config.ca_pem:
            cluster["certificate-authority-data"] = base64.b64encode(config.ca_pem).decode()
        return ExecToken(
            credentials,
            reactor,
            dict(os.environ if environ is None else environ),
            exec_timeout,
            cluster,
        )
    assert isinstance(credentials, NoCredentials)
    return NoToken()
