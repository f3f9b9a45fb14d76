"""
The HTTP site: request limits, the request target, and a redacting access log.

- Bodies are capped while they stream in: a ``Content-Length`` over the cap
  is refused with 413 before any of the body is read, and a chunked body is
  cut off with 413 as soon as it passes the cap (after Synapse's
  ``SynapseRequest``).
- Each request has an absolute deadline for its headers and body, besides
  the idle timeout, so a client trickling bytes cannot hold a connection.
- The number of open connections is capped.
- A request line and header section over ``twisted.web``'s limits (16 KiB,
  500 headers) get 431; any other request ``twisted.web`` cannot parse gets a
  JSON 400. Both close the connection.
- An absolute-form target (``POST http://host/path``, RFC 9112 section
  3.2.2) is served as its origin form, with the target's host as ``Host``.
- Every status line carries its reason phrase (``twisted.web`` has none for
  429 and 431).
- The query is read by one parser, ``query_items``, which splits the target
  exactly as ``twisted.web`` does (at the first ``?``, then on ``&`` and
  ``;``): ``web.py`` reads the delivery's query (and so the authenticator its
  ``token``) with it, and the access log redacts with it, so no form of target
  can show the log a credential the authenticator reads.
- Twisted's default access log writes the full URI, which would carry
  ``?token=`` secrets into the log; this one redacts every query value except
  the few known to be harmless, leaves out the ``Referer``, and escapes
  non-ASCII and control characters, so a line is always one ASCII line.
- A failure while finishing a response (writing the access log, say) closes
  the connection and is logged once: a request that cannot be finished would
  otherwise keep its connection open for ever, past every timeout.
- Every answer the webhook listener sends (probes and the site's own
  refusals included) is timed into an ``IRequestMetrics``, by route
  (``route_of``: a fixed name, never the path) and status.
"""

from __future__ import annotations

import functools
import io
import json
import re
from typing import Any
from urllib.parse import unquote_to_bytes

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _escape
from twisted.web.server import Request, Site

from brigade_cr.core.errors import InvalidText
from brigade_cr.core.interfaces import IRequestMetrics

SAFE_QUERY_NAMES = frozenset({b"commit", b"registry"})
DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 512

# The reason phrase of every status the gateway sends (RFC 9110 section 15),
# where twisted.web has none (429, 431) or an older one (408, 413).
REASONS = {
    200: b"OK",
    202: b"Accepted",
    400: b"Bad Request",
    403: b"Forbidden",
    404: b"Not Found",
    408: b"Request Timeout",
    413: b"Payload Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
}

# What the sender is told when twisted.web cannot parse the request.
MALFORMED_REQUEST = {"status": "Bad Request", "reason": "the request is malformed"}
HEADERS_TOO_LARGE = {"status": "Request Header Fields Too Large"}

_ABSOLUTE_FORM = re.compile(rb"(?i:https?)://([^/?#]*)(.*)", re.DOTALL)


def split_target(target: bytes) -> tuple[bytes, bytes | None]:
    """
    The path and the query of a request target, split exactly as
    ``twisted.web``'s ``Request.requestReceived`` splits them: at the first
    ``?`` (so a ``#`` before it is part of the path). The query is None when
    the target has no ``?``.
    """
    path, mark, query = target.partition(b"?")
    return path, (query if mark else None)


@attrs.frozen
class QueryItem:
    """
    One ``&``- or ``;``-separated item of a query: ``raw`` as sent, ``name``
    and ``value`` decoded as ``twisted.web.http.parse_qs`` decodes them
    (``+`` is a space, then percent-decoding), or None when the item has no
    ``=`` (``twisted.web`` ignores such an item, so nothing reads it).
    """

    raw: bytes
    name: bytes | None
    value: bytes | None


def _unquote(text: bytes) -> bytes:
    return unquote_to_bytes(text.replace(b"+", b" "))


# A request's target is read three times (the URL check, the delivery, the
# access log), and a registry sends every delivery to the same one.
@functools.lru_cache(maxsize=128)
def query_items(target: bytes) -> tuple[QueryItem, ...]:
    """Every item of ``target``'s query, in the order sent (see ``QueryItem``)."""
    _, query = split_target(target)
    if query is None:
        return ()
    items = []
    for part in query.split(b"&"):
        for raw in part.split(b";"):
            name, equals, value = raw.partition(b"=")
            if equals:
                items.append(QueryItem(raw, _unquote(name), _unquote(value)))
            else:
                items.append(QueryItem(raw, None, None))
    return tuple(items)


def query_pairs(target: bytes) -> list[tuple[bytes, bytes]]:
    """
    The query parameters of ``target`` as ``twisted.web`` reads them into
    ``request.args`` (the same items, the same decoding, blank values kept),
    in the order sent.
    """
    return [(item.name, item.value) for item in query_items(target) if item.name is not None and item.value is not None]


def query_text(target: bytes) -> list[tuple[str, str]]:
    """
    ``query_pairs(target)`` decoded as UTF-8.

    Raises ``InvalidText`` when a name or value is not valid UTF-8 (``%ff``,
    an encoded surrogate): such text cannot become data.
    """
    try:
        return [(name.decode("utf-8"), value.decode("utf-8")) for name, value in query_pairs(target)]
    except UnicodeDecodeError:
        raise InvalidText("the query is not valid UTF-8") from None


def origin_form(target: bytes) -> tuple[bytes, bytes | None]:
    """
    ``target`` in origin form, and the host of an absolute-form ``http`` or
    ``https`` target (without any user information), else None: RFC 9112
    section 3.2.2 has a server accept the absolute form, and use its host in
    place of the ``Host`` header.
    """
    match = _ABSOLUTE_FORM.fullmatch(target)
    if match is None:
        return target, None
    authority, rest = match.groups()
    host = authority.rpartition(b"@")[2]
    if not rest.startswith(b"/"):
        rest = b"/" + rest
    return rest, host


def redact_uri(uri: bytes) -> str:
    """
    ``uri`` for the access log: the value of every query item not named in
    ``SAFE_QUERY_NAMES`` (after decoding, as the authenticator reads names)
    replaced by ``REDACTED``, every item without a value replaced by
    ``REDACTED``, the rest as sent, escaped by ``log_text``.
    """
    path, query = split_target(uri)
    if query is None:
        return log_text(path)
    shown = []
    for item in query_items(uri):
        if item.name is None:
            shown.append(b"REDACTED" if item.raw else b"")
        elif item.name in SAFE_QUERY_NAMES:
            shown.append(item.raw)
        else:
            shown.append(item.raw.partition(b"=")[0] + b"=REDACTED")
    return log_text(path + b"?" + b"&".join(shown))


def log_text(value: bytes | str) -> str:
    """
    ``value`` as printable ASCII for a log line: bytes as sent, text as its
    UTF-8 (lone surrogates as ``\\udcxx``), with ``"``, ``\\``, control
    characters and every non-ASCII byte escaped.
    """
    if isinstance(value, str):
        value = value.encode("utf-8", "backslashreplace")
    return str(_escape(value))


# Paths of the probes, kept out of the access log unless --log-probes.
PROBE_PATHS = frozenset({b"/healthz", b"/readyz"})
# Where deliveries are posted (web/routes.py's WEBHOOK_PREFIX).
WEBHOOK_PATH_PREFIX = b"/events/webhook/"


def route_of(path: bytes | None) -> str:
    """
    The route a request path is counted under, one of
    ``core.interfaces.ROUTES``: ``webhook`` below ``/events/webhook/``,
    ``healthz`` and ``readyz`` for the probes, ``other`` for anything else
    (and for a request whose path never arrived).
    """
    if path is None:
        return "other"
    if path.startswith(WEBHOOK_PATH_PREFIX):
        return "webhook"
    if path == b"/healthz":
        return "healthz"
    if path == b"/readyz":
        return "readyz"
    return "other"


def note_build(request: Any, name: str) -> None:
    """Record on ``request`` the build a delivery made, for its access log line."""
    request.brigade_build = name


def _elapsed(site: Any, started: float | None) -> float | None:
    reactor = getattr(site, "reactor", None)
    if started is None or reactor is None:
        return None
    return max(0.0, float(reactor.seconds()) - started)


def _latency(request: Any) -> str:
    seconds = _elapsed(getattr(getattr(request, "channel", None), "site", None), getattr(request, "started_at", None))
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def redacting_log_formatter(timestamp: str, request: Request) -> str:
    """
    A combined-format access log line with the query redacted, the
    ``Referer`` left out (a sender could copy the URL, token and all, there)
    and every field escaped to printable ASCII, then the request's latency
    (milliseconds, from its first line to its answer) and the build a
    delivery made (``build=-`` for none).
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-"
    agent = request.getHeader(b"user-agent") or b"-"
    return (
        '"{ip}" - - {timestamp} "{method} {uri} {protocol}" {code} {length} "-" "{agent}" '
        "latency_ms={latency} build={build}"
    ).format(
        latency=_latency(request),
        build=log_text(getattr(request, "brigade_build", None) or "-"),
        ip=log_text(ip),
        timestamp=log_text(str(timestamp)),
        method=log_text(request.method),
        uri=redact_uri(request.uri),
        protocol=log_text(request.clientproto),
        code=int(request.code),
        length=int(request.sentLength) or "-",
        agent=log_text(agent),
    )


def _raw_response(channel: HTTPChannel, code: int, body: dict[str, str], started: float | None = None) -> None:
    # Answers a request that will never reach the resource: written straight
    # to the transport, then the connection is closed, so nothing more of the
    # request is read. Timed from ``started`` (the request's first line), or
    # else from when the request began to arrive (the deadline's start).
    content = json.dumps(body).encode("utf-8") + b"\n"
    assert channel.transport is not None
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, REASONS[code], len(content), content)
    )
    if isinstance(channel, DeadlineChannel):
        # Answered: the request's deadline must not answer it a second time
        # while the close waits for a peer that does not read.
        channel._disarm()
    site = getattr(channel, "site", None)
    if isinstance(site, BrigadeSite):
        # The request line, when it has arrived (HTTPChannel keeps it until
        # the request's body is complete).
        target = getattr(channel, "_path", None)
        path = split_target(origin_form(target)[0])[0] if isinstance(target, bytes) else None
        site.observe(path, code, started if started is not None else getattr(channel, "receiving_since", None))
    # Ignore whatever else arrives before the close (as HTTPChannel itself
    # does for data after a non-persistent request).
    channel.dataReceived = lambda data: None  # type: ignore[method-assign]
    _close(channel)


def _close(channel: HTTPChannel) -> None:
    # Close after the answer is written; a peer that never reads it (so the
    # close never completes) is aborted after the channel's abortTimeout, as
    # HTTPChannel does on an idle timeout.
    channel.loseConnection()
    if channel.abortTimeout is not None and getattr(channel, "_abortingCall", None) is None:
        channel._abortingCall = channel.callLater(channel.abortTimeout, channel.forceAbortClient)


def _source(request: Request) -> str:
    return str(getattr(request.getClientAddress(), "host", "-"))


class LimitedRequest(Request):
    """
    A ``Request`` that refuses a body larger than its site's ``max_body``,
    serves absolute-form targets, sends a reason phrase with every status and
    closes its connection when it cannot be finished.
    """

    log = Logger()
    _refused = False
    _received = 0
    # When the request's first line arrived (its site's clock), for the latency.
    started_at: float | None = None

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        reactor = getattr(getattr(channel, "site", None), "reactor", None)
        if reactor is not None:
            self.started_at = reactor.seconds()

    def _max_body(self) -> int:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body", DEFAULT_MAX_BODY)

    def _too_large(self) -> None:
        self._refused = True
        self.log.info(
            "Refused a request body over {max_body} bytes from {source}",
            max_body=self._max_body(),
            source=_source(self),
        )
        _raw_response(self.channel, 413, {"status": "Payload Too Large"}, started=self.started_at)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self._max_body():
            # Do not invite the body with "100 Continue".
            self.requestHeaders.removeHeader(b"expect")
            self.content = io.BytesIO()
            self._too_large()
            return
        super().gotLength(length)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        # A refused request may still complete in the same read: never
        # let it reach the resource.
        if self._refused:
            return
        path, host = origin_form(path)
        if host:
            self.requestHeaders.setRawHeaders(b"host", [host])
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body():
            self._too_large()
            return
        super().handleContentChunk(data)

    def __repr__(self) -> str:
        # twisted.web logs requests by their repr (a HEAD with a body, say):
        # never with a ?token= in it.
        return (
            f"<{type(self).__name__} at 0x{id(self):x} method={log_text(self.method)} "
            f"uri={redact_uri(self.uri)} clientproto={log_text(self.clientproto)}>"
        )

    def setResponseCode(self, code: int, message: bytes | None = None) -> None:
        super().setResponseCode(code, message if message is not None else REASONS.get(code))

    def finish(self) -> None:
        if self._disconnected or self.finished:
            # twisted.web's own refusals (a finish after the connection was
            # lost, or a second one) stand.
            super().finish()
            return
        try:
            super().finish()
        except Exception:
            self._finish_failed(Failure())

    def _finish_failed(self, failure: Failure) -> None:
        # The request never reaches requestDone, so the channel would neither
        # serve another request nor time out: close it.
        self.log.failure(
            "Could not finish the response to {source}; closed the connection",
            failure,
            source=_source(self),
        )
        self.finished = 1
        if self.channel is not None:
            _close(self.channel)


class DeadlineChannel(HTTPChannel):
    """
    An ``HTTPChannel`` that gives each request ``site.request_timeout``
    seconds, from its first byte (or from the connection, for the first
    request), to arrive whole; a request still arriving then is answered 408
    and the connection closed. A request line and header section over
    ``totalHeadersSize`` bytes (or ``maxHeaders`` headers) is answered 431;
    any other request ``twisted.web`` refuses is answered with a JSON 400.
    """

    log = Logger()
    site: BrigadeSite
    _deadline: IDelayedCall | None = None
    _host: Any = None
    # When the request now arriving began to (its deadline's start).
    receiving_since: float | None = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.callLater(self.site.request_timeout, self._expire)
            self.receiving_since = self.site.reactor.seconds()

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def getHost(self) -> Any:
        # Every request asks its channel for the local address, and a TCP
        # transport asks the kernel (getsockname) each time: it cannot
        # change while the connection lasts.
        host = self._host
        if host is None:
            host = self._host = super().getHost()
        return host

    def _peer(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "-")) if self.transport else "-"

    def _expire(self) -> None:
        self._deadline = None
        self.log.info(
            "Closed a connection from {source}: request not received within {seconds}s",
            source=self._peer(),
            seconds=self.site.request_timeout,
        )
        _raw_response(self, 408, {"status": "Request Timeout"})

    def _headers_too_large(self) -> None:
        self._disarm()
        self.log.info(
            "Refused a request from {source}: header section over {limit} bytes or {count} fields",
            source=self._peer(),
            limit=self.totalHeadersSize,
            count=self.maxHeaders,
        )
        _raw_response(self, 431, HEADERS_TOO_LARGE)

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own refusal is a bare status line; say it in JSON.
        self._disarm()
        self.log.info("Refused a malformed request from {source}", source=self._peer())
        _raw_response(self, 400, MALFORMED_REQUEST)

    def lineReceived(self, line: bytes) -> None:
        # HTTPChannel counts the request line and headers against
        # totalHeadersSize and answers a bare 400; this is a 431.
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._headers_too_large()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # A single line over MAX_LENGTH: LineReceiver would just close.
        self._headers_too_large()

    def headerReceived(self, line: bytes) -> bool:
        if self._receivedHeaderCount >= self.maxHeaders:
            self._headers_too_large()
            return False
        return bool(super().headerReceived(line))

    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connection_opened(self)
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        if not self._handlingRequest:
            self._arm()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        self.site.connection_closed(self)
        super().connectionLost(reason)


class BrigadeSite(Site):
    """
    A ``Site`` with the limits above: ``max_body`` bytes per request body,
    ``request_timeout`` seconds per request, ``max_connections`` open at once
    (more are closed as soon as they are accepted). Every answer it sends is
    observed in ``metrics`` (when given): the finished requests as their
    access log line is made (before probes are left out of it), and the
    site's own refusals (400, 408, 413, 431) as they are written.
    """

    _log = Logger()
    protocol = DeadlineChannel  # type: ignore[assignment]
    requestFactory = LimitedRequest

    def __init__(
        self,
        resource: Any,
        reactor: IReactorTime,
        max_body: int = DEFAULT_MAX_BODY,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        log_probes: bool = False,
        metrics: IRequestMetrics | None = None,
    ) -> None:
        self.log_probes = log_probes
        self.metrics = metrics
        super().__init__(
            resource,
            logFormatter=redacting_log_formatter,
            timeout=idle_timeout,
            reactor=reactor,
            # A webhook body is never a form: do not spend the reactor
            # parsing one (a hostile multipart body can be costly).
            parsePOSTFormSubmission=False,
        )
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self._full = False

    def observe(self, path: bytes | None, code: int, started: float | None) -> None:
        """Time an answer with status ``code`` to a request for ``path`` that began to arrive at ``started``."""
        seconds = _elapsed(self, started)
        if self.metrics is not None and seconds is not None:
            self.metrics.answered(route_of(path), int(code), seconds)

    def log(self, request: Any) -> None:
        self.observe(getattr(request, "path", None), request.code, getattr(request, "started_at", None))
        # Probes come every few seconds from every kubelet: they would bury
        # the deliveries.
        if not self.log_probes and request.path in PROBE_PATHS:
            return
        super().log(request)

    def buildProtocol(self, addr: Any) -> Any:
        if self.open_connections >= self.max_connections:
            if not self._full:
                self._full = True
                self._log.warn(
                    "Refusing connections: {count} are open (--max-connections)",
                    count=self.open_connections,
                )
            return None
        self._full = False
        return super().buildProtocol(addr)

    def connection_opened(self, channel: HTTPChannel) -> None:
        self.open_connections += 1

    def connection_closed(self, channel: HTTPChannel) -> None:
        self.open_connections -= 1


class ScrapeSite(Site):
    """A ``Site`` (the metrics listener's) whose requests reach the access log only with ``log_probes``."""

    def __init__(self, resource: Any, reactor: Any, log_probes: bool = False) -> None:
        super().__init__(resource, reactor=reactor, logFormatter=redacting_log_formatter)
        self.log_probes = log_probes

    def log(self, request: Any) -> None:
        if self.log_probes:
            super().log(request)
