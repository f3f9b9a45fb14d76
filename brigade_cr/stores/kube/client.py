"""
A small asynchronous Kubernetes API client on treq: just what brigade-cr
needs (Secrets, a watch on them, and ``/version``), JSON in and out.

(Why one module of about 800 lines: every call, the streaming watch
included, shares one request path — token, timeout, bounded body, the
mapping of every failure to ``KubeStatusError`` or ``KubeTransportError`` —
and splitting that path would spread one set of failure rules over several
files.)

The one seam is the injected HTTP client: treq's ``HTTPClient`` (or, in
tests, ``treq.testing.StubTreq``). ``KubeClient.from_config`` builds the real
one: ``treq.client.HTTPClient`` over an ``Agent`` made with
``Agent.usingEndpointFactory`` and the project's own ``HTTPConnectionPool``,
whose endpoint factory (``ServerEndpoints``) always connects to the
configured server with the TLS policy of ``tls.py``, whatever host the URL
names. That is what lets an IPv6-literal server (``https://[fd00::1]:443``,
the in-cluster address of IPv6 clusters) go through treq: treq encodes every
URL with hyperlink, which cannot encode an IPv6 literal host, so such a
client is given a URL with the placeholder host ``IPV6_URL_HOST`` and an
explicit ``Host`` header carrying the real ``[addr]:port``
(``docs/architecture.md``, "Why some Kubernetes code is hand-written").
Redirects are never followed (``allow_redirects=False``), so the token is
never carried elsewhere.

Every call either fires with the decoded JSON object the server answered
with (2xx), or fails with exactly one of:

- ``KubeStatusError``: the server answered non-2xx; it carries the code and
  the server's ``Status`` (``reason``, ``message``) and ``retry_after`` from
  ``Retry-After`` (or ``details.retryAfterSeconds``);
- ``KubeTransportError``: no usable answer (connection refused or reset,
  DNS, TLS failure, timeout, a malformed or oversized body, or no bearer
  token could be obtained); its ``reason`` is safe to log.

Cancelling a call's Deferred aborts it and fails it with ``CancelledError``.
Nothing here logs a token, an ``Authorization`` header or a body.

Each request sent (each attempt: a 401 retried is two) is observed in the
client's ``IKubeRequestMetrics``, when it has one: its verb (``get``,
``list``, ``watch``, ``create``...), the status it was answered with (None
for a ``KubeTransportError``: no usable answer) and how long that took. A
watch is observed once, when its answer's headers arrive (its duration is
to them, not the stream's length) or when it fails before them. A call that
sends nothing (no credentials) or that its caller cancels is not observed.
"""

from __future__ import annotations

import email.utils
import json
import math
from typing import Any, Callable, ClassVar, Mapping, cast
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import attrs
from hyperlink import EncodedURL
from OpenSSL import SSL
from service_identity import VerificationError
from treq.client import HTTPClient
from treq.cookies import IndexableCookieJar
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.error import (
    ConnectError,
    ConnectionClosed,
    ConnectionRefusedError,
    DNSLookupError,
)
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IConsumer, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseNeverReceived
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    _HTTP11ClientFactory,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgentEndpointFactory, IBodyProducer, IResponse
from zope.interface import implementer

from brigade_cr import __version__
from brigade_cr.core.interfaces import IKubeRequestMetrics
from brigade_cr.stores.kube.config import KubeConfig
from brigade_cr.stores.kube.credentials import ITokenSource, KubeCredentialError, ThreadRunner, token_source_for
from brigade_cr.stores.kube.tls import tls_policy

USER_AGENT = f"brigade-cr/{__version__}"
DEFAULT_TIMEOUT = 10.0
# A Secret holds at most 1 MiB of data; its base64 and JSON add a third.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
# Persistent connections kept to the API server when makeService gives no
# in-flight limit: the builds in flight plus the project watch.
DEFAULT_MAX_PERSISTENT = 8
# The URL host treq is given for an IPv6-literal server (see the module
# docstring); never resolved: ServerEndpoints ignores the URL's host.
IPV6_URL_HOST = "kube-apiserver.ipv6.invalid"

# The verb a request of each method is counted under, unless its call names one.
_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    413: "RequestEntityTooLarge",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


class KubeError(Exception):
    """A Kubernetes API call failed."""


class KubeStatusError(KubeError):
    """
    The API server answered with a non-2xx code.

    ``status`` is its ``Status`` object (synthesised from the code when the
    body was not one); ``reason`` and ``message`` are taken from it;
    ``retry_after`` is whole seconds, or ``None`` when the server gave none.
    """

    def __init__(self, code: int, status: Mapping[str, Any], retry_after: int | None = None):
        self.code = code
        self.status = dict(status)
        self.reason = str(status.get("reason") or _REASONS.get(code, "Unknown"))
        self.message = str(status.get("message") or "")
        self.retry_after = retry_after
        super().__init__(f"{code} {self.reason}: {self.message[:300]}")


class KubeTransportError(KubeError):
    """
    No usable answer from the API server: ``reason`` says why, in words that
    are safe to log and to return (no token, no body).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _ResponseTooLarge(Exception):
    pass


def parse_retry_after(value: str | None, now: float) -> int | None:
    """
    Seconds to wait from a ``Retry-After`` header: delta-seconds, or an
    HTTP-date compared with ``now`` (POSIX seconds). ``None`` when absent or
    unreadable; never negative.
    """
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0, math.ceil(when.timestamp() - now))


@implementer(IBodyProducer)
class _BytesProducer:
    """
    Writes a request body at once. treq's default producer for bytes is a
    ``FileBodyProducer`` on the global cooperator (and so the global
    reactor); this one needs neither.
    """

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _QuietHTTP11ClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory without Twisted's per-connection
    "Starting factory" / "Stopping factory" log lines (``Factory.noisy``).
    """

    noisy = False


class QuietPool(HTTPConnectionPool):
    """An ``HTTPConnectionPool`` whose connections do not log their factory's start and stop."""

    _factory = _QuietHTTP11ClientFactory


@implementer(IAgentEndpointFactory)
@attrs.frozen
class ServerEndpoints:
    """
    Endpoints to the one configured API server (``host``, ``port``, TLS with
    ``creator`` when not ``None``), whatever host the request URL names.
    """

    reactor: Any
    host: str
    port: int
    creator: Any  # IOpenSSLClientConnectionCreator, or None for http
    connect_timeout: float
    # One endpoint, made at the first request: an endpoint can connect any
    # number of times, and making one IDNA-encodes the host, a measurable
    # share of a build's creation (docs/performance.md).
    _made: list[IStreamClientEndpoint] = attrs.field(init=False, factory=list, repr=False, eq=False)

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        """The TCP (and TLS) endpoint to the configured server."""
        if not self._made:
            endpoint: IStreamClientEndpoint = HostnameEndpoint(self.reactor, self.host, self.port, self.connect_timeout)
            if self.creator is not None:
                endpoint = wrapClientTLS(self.creator, endpoint)
            self._made.append(endpoint)
        return self._made[0]


class _URI(EncodedURL):
    """
    A URL already in URI form (ASCII, percent-encoded, its host IDNA-encoded
    once, in ``_url_and_host``). treq turns every URL it is given into URI
    form (``to_uri()``), which IDNA-encodes the host again on every request:
    measured at a sixth of the CPU a build's creation costs
    (docs/performance.md). For this URL that is the identity.
    """

    _text: str | None = None

    def to_uri(self) -> _URI:
        return self

    def to_text(self, with_password: bool = False) -> str:
        # treq asks for the text of every request's URL; the URL does not
        # change, so neither does its text.
        if with_password:
            return str(super().to_text(with_password))
        if self._text is None:
            self._text = str(super().to_text())
        return self._text


class _NoCookies(IndexableCookieJar):
    """
    A cookie jar that neither sends nor keeps a cookie. The Kubernetes API
    authenticates every request by its token or certificate and sets no
    cookie; treq's cookie handling of every request and answer is measurable
    on the path that creates builds (docs/performance.md).
    """

    def add_cookie_header(self, request: Any) -> None:
        pass

    def extract_cookies(self, response: Any, request: Any) -> None:
        pass

    def set_cookie(self, cookie: Any) -> None:
        pass


# Given as every request's ``cookies``: an empty jar treq need not build.
_NO_COOKIES = _NoCookies()
# At most this many parsed request URLs are kept (they are few: one per
# namespace and call).
_URL_CACHE_SIZE = 64


def _url_and_host(server: str) -> tuple[str, str | None]:
    """
    The base URL treq is given for ``server`` (in URI form: ASCII, the host
    IDNA-encoded) and the ``Host`` header to send (``None``: the URL's own).
    Only an IPv6-literal host is replaced.
    """
    parts = urlsplit(server)
    host = parts.hostname or ""
    if ":" not in host:
        return EncodedURL.from_text(server).to_uri().to_text(), None
    port = parts.port
    netloc = IPV6_URL_HOST + (f":{port}" if port is not None else "")
    real = f"[{host}]" + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), real


class _BoundedBody(Protocol):
    """Collects a response body, failing (and dropping the connection) past ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.done: Deferred[bytes] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[bytes]) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self.done.errback(_ResponseTooLarge())
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done.called:
            return
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self.done.callback(b"".join(self.chunks))
        else:
            self.done.errback(reason)


class _LineStream(Protocol):
    """
    A watch body: newline-delimited JSON objects, each passed to
    ``on_event`` as its line completes. ``done`` fires with None when the
    body ends cleanly and fails with ``KubeTransportError`` when it breaks,
    stays silent for ``idle`` seconds, or holds a line over ``limit`` bytes
    or one that is not a JSON object.
    """

    def __init__(
        self, on_event: Callable[[dict[str, Any]], None], limit: int, idle: float, clock: IReactorTime
    ) -> None:
        self.on_event = on_event
        self.limit = limit
        self.idle = idle
        self.clock = clock
        self.buffer = b""
        self.done: Deferred[None] = Deferred(lambda _: self._drop())
        self.timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.timer = self.clock.callLater(self.idle, self._silent)

    def _drop(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _fail(self, failure: Failure | BaseException) -> None:
        if not self.done.called:
            self.done.errback(failure)
        self._drop()

    def _silent(self) -> None:
        self._fail(KubeTransportError(f"watch stream silent for {self.idle:g}s"))

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        if self.timer is not None and self.timer.active():
            self.timer.reset(self.idle)
        self.buffer += data
        while not self.done.called:
            end = self.buffer.find(b"\n")
            if end < 0:
                if len(self.buffer) > self.limit:
                    self._fail(KubeTransportError(f"watch event longer than {self.limit} bytes"))
                return
            line, self.buffer = self.buffer[:end], self.buffer[end + 1 :]
            if end > self.limit:
                self._fail(KubeTransportError(f"watch event longer than {self.limit} bytes"))
                return
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if not isinstance(event, dict):
                self._fail(KubeTransportError("watch event is not a JSON object"))
                return
            try:
                self.on_event(event)
            except Exception:
                self._fail(Failure())
                return

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.done.called:
            return
        if isinstance(reason.value, (ResponseDone, PotentialDataLoss)):
            self.done.callback(None)
        else:
            self.done.errback(
                KubeTransportError("watch stream broken: " + transport_reason(reason.value or ConnectionClosed()))
            )


class _Discard(Protocol):
    """Drops the connection of a body nobody will read."""

    def connectionMade(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]


def _read_body(response: Any, limit: int) -> Deferred[bytes]:
    """Fires with the body, or fails with ``_ResponseTooLarge`` past ``limit`` bytes."""
    length = getattr(response, "length", UNKNOWN_LENGTH)
    collector = _BoundedBody(limit)
    if length is not UNKNOWN_LENGTH and isinstance(length, int) and length > limit:
        collector.done.errback(_ResponseTooLarge())
        response.deliverBody(_Discard())
        return collector.done
    response.deliverBody(collector)
    return collector.done


def _first_reason(error: BaseException) -> BaseException:
    """The underlying failure of the wrappers ``Agent`` raises."""
    if isinstance(error, (ResponseNeverReceived, ResponseFailed, RequestTransmissionFailed)):
        reasons = getattr(error, "reasons", None) or []
        values = [f.value for f in reasons if isinstance(f, Failure) and f.value is not None]
        for value in values:
            if isinstance(value, (SSL.Error, VerificationError)):
                return value
        if values:
            return _first_reason(values[0])
    return error


def transport_reason(error: BaseException) -> str:
    """Safe words for why a request got no usable answer."""
    error = _first_reason(error)
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, DNSLookupError):
        return "DNS lookup failed"
    if isinstance(error, ConnectTimeoutError):
        return "connect timed out"
    if isinstance(error, VerificationError):
        return "TLS: the server certificate does not match the expected name"
    if isinstance(error, SSL.Error):
        details = []
        for entry in (error.args[0] if error.args else None) or []:
            if isinstance(entry, tuple) and entry:
                details.append(str(entry[-1]))
        return "TLS failure" + (": " + ", ".join(details) if details else "")
    if isinstance(error, ConnectError):
        return f"connect failed ({type(error).__name__})"
    if isinstance(error, ConnectionClosed):
        return "connection lost before a complete response"
    return f"request failed ({type(error).__name__})"


def _status_body(code: int, body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    if isinstance(document, dict) and document.get("kind") == "Status":
        return document
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": _REASONS.get(code, "Unknown"),
        # A proxy's error page could say anything: report only its size.
        "message": f"HTTP {code} with a non-Status body of {len(body)} bytes",
    }


def _header(headers: Headers, name: bytes) -> str | None:
    values = headers.getRawHeaders(name)
    if not values:
        return None
    value = values[-1]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


@attrs.define
class KubeClient:
    """
    Calls to one Kubernetes API server.

    ``http`` makes the requests (treq's ``HTTPClient``, or ``StubTreq`` in
    tests); ``base_url`` is the URL requests are made below (a path prefix
    is kept); ``host_header``, when set, is sent as ``Host`` (an IPv6-literal
    server, see the module docstring); ``tokens`` gives the bearer token;
    ``clock`` times each attempt out after ``timeout`` seconds; bodies over
    ``max_body`` bytes are refused. ``pool`` is the connection pool
    ``from_config`` made, closed by ``close()``. ``metrics``, when set,
    observes every request sent (see the module docstring).
    """

    http: Any
    base_url: str
    tokens: ITokenSource
    clock: IReactorTime
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    user_agent: str = USER_AGENT
    pool: HTTPConnectionPool | None = attrs.field(default=None, repr=False)
    host_header: str | None = None
    metrics: IKubeRequestMetrics | None = None
    _uris: dict[str, _URI] = attrs.field(init=False, factory=dict, repr=False, eq=False)

    log: ClassVar[Logger] = Logger()

    @classmethod
    def from_config(
        cls,
        reactor: Any,
        config: KubeConfig,
        timeout: float = DEFAULT_TIMEOUT,
        max_persistent: int = DEFAULT_MAX_PERSISTENT,
        run_in_thread: ThreadRunner | None = None,
        metrics: IKubeRequestMetrics | None = None,
    ) -> KubeClient:
        """
        A client for ``config``'s server: treq's ``HTTPClient`` over an
        ``Agent`` on ``reactor`` whose endpoints (``ServerEndpoints``) connect
        to the server with the TLS policy of ``tls.tls_policy(config)``
        within ``timeout`` seconds, sharing a persistent pool that keeps up
        to ``max_persistent`` connections (each dropped after 60 s idle), and
        the token source the config describes (an exec plugin runs in
        ``run_in_thread``, the reactor's thread pool by default); its
        requests are observed in ``metrics``.

        Raises ``KubeConfigError`` for unusable TLS material. Touches no
        network and runs no plugin.
        """
        parts = urlsplit(config.server)
        https = parts.scheme == "https"
        pool = QuietPool(reactor, persistent=True)  # type: ignore[no-untyped-call]
        pool.maxPersistentPerHost = max_persistent
        pool.cachedConnectionTimeout = 60
        creator = tls_policy(config).creator if https else None
        endpoints = ServerEndpoints(
            reactor, parts.hostname or "", parts.port or (443 if https else 80), creator, timeout
        )
        agent = Agent.usingEndpointFactory(reactor, endpoints, pool=pool)  # type: ignore[no-untyped-call]
        base_url, host_header = _url_and_host(config.server)
        return cls(
            http=HTTPClient(agent, cookiejar=_NoCookies(), data_to_body_producer=_BytesProducer),
            base_url=base_url,
            tokens=token_source_for(config, reactor, run_in_thread),
            clock=reactor,
            timeout=timeout,
            pool=pool,
            host_header=host_header,
            metrics=metrics,
        )

    def close(self) -> Deferred[None]:
        """Close idle pooled connections; fires when they are closed."""
        if self.pool is None:
            return succeed(None)
        closed: Deferred[None] = self.pool.closeCachedConnections()  # type: ignore[no-untyped-call]
        return closed

    # -- the API calls ---------------------------------------------------

    def get_secret(self, namespace: str, name: str) -> Deferred[dict[str, Any]]:
        """Fires with the Secret ``namespace/name``; a missing one fails with a 404 ``KubeStatusError``."""
        return self.request("GET", _secret_path(namespace, name), verb="get")

    def create_secret(self, namespace: str, secret: Mapping[str, Any]) -> Deferred[dict[str, Any]]:
        """
        Creates ``secret`` in ``namespace``; fires with the stored Secret.
        A name already taken fails with a 409 (reason ``AlreadyExists``).
        """
        return self.request(
            "POST",
            _secrets_path(namespace),
            params={"fieldManager": "brigade-cr"},
            body=secret,
        )

    def list_secrets(
        self,
        namespace: str,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        Fires with the ``SecretList`` of ``namespace``, filtered by the given
        selectors (``"a=b,c"``, ``"type=brigade.sh/build"``). ``limit`` and
        ``continue_token`` page through it; a page over the body bound fails
        with ``KubeTransportError``, so list large namespaces in pages.
        """
        params: dict[str, str] = {}
        if label_selector:
            params["labelSelector"] = label_selector
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit is not None:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        return self.request("GET", _secrets_path(namespace), params=params or None, verb="list")

    def watch_secrets(
        self,
        namespace: str,
        on_event: Callable[[dict[str, Any]], None],
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 300,
        idle_timeout: float | None = None,
        max_line: int | None = None,
    ) -> Deferred[None]:
        """
        Watch the Secrets of ``namespace`` (``watch=1&allowWatchBookmarks=true``)
        from ``resource_version``, calling ``on_event(event)`` with each
        decoded event object (``{"type": ..., "object": ...}``) in order, on
        the reactor, as its line arrives.

        The server is asked to end the stream after ``timeout_seconds``; the
        stream fires with None when it ends cleanly. Only the wait for the
        answer's headers is bounded by ``timeout``; after that, a stream that
        sends nothing for ``idle_timeout`` seconds (default
        ``timeout_seconds + 30``) is dropped and fails with
        ``KubeTransportError``, as does a broken stream, a line longer than
        ``max_line`` bytes (default ``max_body``) or one that is not a JSON
        object. A non-2xx answer fails with ``KubeStatusError`` (a 401 is
        retried once with a fresh token, as ``request`` does). If
        ``on_event`` raises, the stream is dropped and fails with that
        error. Cancelling the Deferred drops the stream.
        """
        params: dict[str, str] = {"watch": "1", "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout_seconds)}
        if field_selector:
            params["fieldSelector"] = field_selector
        if resource_version:
            params["resourceVersion"] = resource_version
        path = _secrets_path(namespace)
        url = self.base_url.rstrip("/") + path + "?" + urlencode(params)
        idle = float(timeout_seconds) + 30.0 if idle_timeout is None else idle_timeout
        limit = self.max_body if max_line is None else max_line
        return Deferred.fromCoroutine(self._watch(path, url, on_event, idle, limit))

    async def _watch(
        self, path: str, url: str, on_event: Callable[[dict[str, Any]], None], idle: float, limit: int
    ) -> None:
        token = await self._token()
        try:
            return await self._watch_attempt(path, url, on_event, idle, limit, token)
        except KubeStatusError as e:
            if e.code != 401 or token is None:
                raise
        self.log.info(
            "Kubernetes API refused the token (401) for watch {path}; refreshing it and retrying once", path=path
        )
        self.tokens.invalidate()
        return await self._watch_attempt(path, url, on_event, idle, limit, await self._token())

    async def _watch_attempt(
        self,
        path: str,
        url: str,
        on_event: Callable[[dict[str, Any]], None],
        idle: float,
        limit: int,
        token: str | None,
    ) -> None:
        headers = self._headers(token, has_body=False)
        started = self.clock.seconds()
        requested: Deferred[IResponse] = self.http.request(
            "GET",
            url,
            headers=headers,
            data=None,
            cookies=_NO_COOKIES,
            allow_redirects=False,  # never carry the token elsewhere
            unbuffered=True,
            reactor=self.clock,
        )
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            requested.cancel()

        timer: IDelayedCall = self.clock.callLater(self.timeout, expire)
        try:
            response = await requested
        except Exception as e:
            if timed_out:
                self._observe("watch", None, started)
                raise KubeTransportError(f"timed out after {self.timeout:g}s") from None
            if isinstance(e, CancelledError) or isinstance(_first_reason(e), CancelledError):
                raise CancelledError() from None
            self._observe("watch", None, started)
            raise KubeTransportError(transport_reason(e)) from None
        finally:
            if timer.active():
                timer.cancel()
        code = int(response.code)
        self._observe("watch", code, started)
        if not 200 <= code < 300:
            try:
                body = await _read_body(response, self.max_body)
            except _ResponseTooLarge:
                body = b""
            except Exception as e:
                raise KubeTransportError(transport_reason(e)) from None
            raise self._status_error(response, code, body)
        lines = _LineStream(on_event, limit, idle, self.clock)
        response.deliverBody(lines)
        await lines.done

    def version(self) -> Deferred[dict[str, Any]]:
        """Fires with the server's ``/version`` (``major``, ``minor``, ``gitVersion``, ...)."""
        return self.request("GET", "/version", verb="get")

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        verb: str | None = None,
    ) -> Deferred[dict[str, Any]]:
        """
        ``method`` ``path`` (below ``base_url``) with the query ``params`` and
        the JSON ``body``. Fires with the decoded JSON object of a 2xx answer;
        fails with ``KubeStatusError`` or ``KubeTransportError`` (see the
        module docstring). Each attempt is observed in ``metrics`` as
        ``verb``: by default the method's (``GET`` is ``get``, ``POST``
        ``create``, ``PUT`` ``update``, ``PATCH`` ``patch``, ``DELETE``
        ``delete``, anything else ``other``).

        A 401 makes the token source forget its token, and the request is
        sent once more with a fresh one. Each attempt is bounded by
        ``timeout``; obtaining a token is bounded by its source (an exec
        plugin has its own timeout).
        """
        url = self.base_url.rstrip("/") + path
        if params:
            url += "?" + urlencode(dict(params))
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode("utf-8")
        return Deferred.fromCoroutine(self._call(method, path, url, data, verb or _VERBS.get(method, "other")))

    async def _token(self) -> str | None:
        try:
            return await self.tokens.token()
        except KubeCredentialError as e:
            raise KubeTransportError(f"no credentials: {e.reason}") from e

    async def _call(self, method: str, path: str, url: str, data: bytes | None, verb: str) -> dict[str, Any]:
        token = await self._token()
        try:
            return await self._attempt(method, path, url, data, token, verb)
        except KubeStatusError as e:
            if e.code != 401 or token is None:
                raise
        self.log.info(
            "Kubernetes API refused the token (401) for {method} {path}; refreshing it and retrying once",
            method=method,
            path=path,
        )
        self.tokens.invalidate()
        return await self._attempt(method, path, url, data, await self._token(), verb)

    def _observe(self, verb: str, code: int | None, started: float) -> None:
        if self.metrics is not None:
            self.metrics.kube_request(verb, code, max(0.0, self.clock.seconds() - started))

    async def _attempt(
        self, method: str, path: str, url: str, data: bytes | None, token: str | None, verb: str
    ) -> dict[str, Any]:
        # One attempt is one request sent: observed by what it ended with
        # (a cancelled one is not).
        started = self.clock.seconds()
        answered: list[int] = []
        try:
            result = await self._timed_attempt(method, path, url, data, token, answered)
        except KubeStatusError as e:
            self._observe(verb, e.code, started)
            raise
        except KubeTransportError:
            self._observe(verb, None, started)
            raise
        self._observe(verb, answered[-1], started)
        return result

    async def _timed_attempt(
        self, method: str, path: str, url: str, data: bytes | None, token: str | None, answered: list[int]
    ) -> dict[str, Any]:
        exchange = Deferred.fromCoroutine(self._exchange(method, url, data, token, answered))
        timed_out: list[bool] = []

        def expire() -> None:
            timed_out.append(True)
            exchange.cancel()

        timer: IDelayedCall = self.clock.callLater(self.timeout, expire)
        try:
            result = await exchange
        except (KubeStatusError, KubeTransportError) as e:
            self.log.debug(
                "Kubernetes API {method} {path} failed: {error}",
                method=method,
                path=path,
                error=str(e),
            )
            raise
        except CancelledError:
            if timed_out:
                self.log.debug("Kubernetes API {method} {path} timed out", method=method, path=path)
                raise KubeTransportError(f"timed out after {self.timeout:g}s") from None
            raise
        except Exception as e:
            if timed_out:
                raise KubeTransportError(f"timed out after {self.timeout:g}s") from None
            if isinstance(_first_reason(e), CancelledError):
                # The caller cancelled; the Agent wrapped it.
                raise CancelledError() from None
            reason = transport_reason(e)
            self.log.debug(
                "Kubernetes API {method} {path} failed: {reason}",
                method=method,
                path=path,
                reason=reason,
            )
            raise KubeTransportError(reason) from None
        finally:
            if timer.active():
                timer.cancel()
        return result

    def _headers(self, token: str | None, has_body: bool) -> Headers:
        headers = {
            b"Accept": [b"application/json"],
            b"User-Agent": [self.user_agent.encode("ascii")],
        }
        if has_body:
            headers[b"Content-Type"] = [b"application/json"]
        if self.host_header is not None:
            headers[b"Host"] = [self.host_header.encode("ascii")]
        if token is not None:
            headers[b"Authorization"] = [b"Bearer " + token.encode("utf-8")]
        return Headers(headers)

    def _uri(self, url: str) -> _URI:
        uri = self._uris.get(url)
        if uri is None:
            if len(self._uris) >= _URL_CACHE_SIZE:
                self._uris.clear()
            uri = self._uris[url] = cast(_URI, _URI.from_text(url))
        return uri

    def _status_error(self, response: Any, code: int, body: bytes) -> KubeStatusError:
        status = _status_body(code, body)
        retry_after = parse_retry_after(_header(response.headers, b"Retry-After"), self.clock.seconds())
        if retry_after is None:
            details = status.get("details")
            seconds = details.get("retryAfterSeconds") if isinstance(details, dict) else None
            if isinstance(seconds, int) and seconds > 0:
                retry_after = seconds
        return KubeStatusError(code, status, retry_after)

    async def _exchange(
        self, method: str, url: str, data: bytes | None, token: str | None, answered: list[int]
    ) -> dict[str, Any]:
        response = await self.http.request(
            method,
            self._uri(url),
            headers=self._headers(token, data is not None),
            data=data,
            cookies=_NO_COOKIES,
            allow_redirects=False,  # never carry the token elsewhere
            unbuffered=True,
            reactor=self.clock,
        )
        try:
            body = await _read_body(response, self.max_body)
        except _ResponseTooLarge:
            raise KubeTransportError(f"response larger than {self.max_body} bytes (HTTP {response.code})") from None
        code = int(response.code)
        answered.append(code)
        if not 200 <= code < 300:
            raise self._status_error(response, code, body)
        try:
            document = json.loads(body)
        except ValueError:
            raise KubeTransportError(f"HTTP {code} answer is not JSON") from None
        if not isinstance(document, dict):
            raise KubeTransportError(f"HTTP {code} answer is not a JSON object")
        return document


def _secrets_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets"


def _secret_path(namespace: str, name: str) -> str:
    return f"{_secrets_path(namespace)}/{quote(name, safe='')}"
