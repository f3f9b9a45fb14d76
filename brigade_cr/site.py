"""
The HTTP site: request limits and a redacting access log.

- Bodies are capped while they stream in: a ``Content-Length`` over the cap
  is refused with 413 before any of the body is read, and a chunked body is
  cut off with 413 as soon as it passes the cap (after Synapse's
  ``SynapseRequest``).
- Each request has an absolute deadline for its headers and body, besides
  the idle timeout, so a client trickling bytes cannot hold a connection.
- The number of open connections is capped.
- Twisted's default access log writes the full URI, which would carry
  ``?token=`` secrets into the log; this one redacts every query value except
  the few known to be harmless, and leaves out the ``Referer``.
"""

from __future__ import annotations

import io
import json
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _escape
from twisted.web.server import Request, Site

SAFE_QUERY_NAMES = frozenset({"commit", "registry"})
DEFAULT_MAX_BODY = 256 * 1024
DEFAULT_REQUEST_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_MAX_CONNECTIONS = 512


def redact_uri(uri: bytes) -> str:
    """
    ``uri`` with the value of every query parameter not in
    ``SAFE_QUERY_NAMES`` replaced by ``REDACTED``.
    """
    text = uri.decode("latin-1")
    parts = urlsplit(text)
    if not parts.query:
        return text
    pairs = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        shown = value if name in SAFE_QUERY_NAMES else "REDACTED"
        pairs.append(f"{name}={shown}")
    return f"{parts.path}?{'&'.join(pairs)}"


def redacting_log_formatter(timestamp: str, request: Request) -> str:
    """
    A combined-format access log line with the query redacted and the
    ``Referer`` left out (a sender could copy the URL, token and all, there).
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-"
    agent = request.getHeader(b"user-agent") or b"-"
    return '"{ip}" - - {timestamp} "{method} {uri} {protocol}" {code} {length} "-" "{agent}"'.format(
        ip=_escape(ip),
        timestamp=timestamp,
        method=_escape(request.method),
        uri=_escape(redact_uri(request.uri)),
        protocol=_escape(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        agent=_escape(agent),
    )


def _raw_response(channel: HTTPChannel, code: int, phrase: str, body: dict[str, str]) -> None:
    # Answers a request that will never reach the resource: written straight
    # to the transport, then the connection is closed, so nothing more of the
    # request is read.
    content = json.dumps(body).encode("utf-8") + b"\n"
    assert channel.transport is not None
    channel.transport.write(
        b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"Connection: close\r\n\r\n%s" % (code, phrase.encode("ascii"), len(content), content)
    )
    # Ignore whatever else arrives before the close (as HTTPChannel itself
    # does for data after a non-persistent request).
    channel.dataReceived = lambda data: None  # type: ignore[method-assign]
    channel.loseConnection()


class LimitedRequest(Request):
    """A ``Request`` that refuses a body larger than its site's ``max_body``."""

    log = Logger()
    _refused = False
    _received = 0

    def _max_body(self) -> int:
        site = getattr(self.channel, "site", None)
        return getattr(site, "max_body", DEFAULT_MAX_BODY)

    def _too_large(self) -> None:
        self._refused = True
        self.log.info(
            "Refused a request body over {max_body} bytes from {source}",
            max_body=self._max_body(),
            source=getattr(self.getClientAddress(), "host", "-"),
        )
        _raw_response(self.channel, 413, "Payload Too Large", {"status": "Payload Too Large"})

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
        super().requestReceived(command, path, version)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._max_body():
            self._too_large()
            return
        super().handleContentChunk(data)


class DeadlineChannel(HTTPChannel):
    """
    An ``HTTPChannel`` that gives each request ``site.request_timeout``
    seconds, from its first byte (or from the connection, for the first
    request), to arrive whole; a request still arriving then is answered 408
    and the connection closed.
    """

    log = Logger()
    site: BrigadeSite
    _deadline: IDelayedCall | None = None

    def _arm(self) -> None:
        if self._deadline is None:
            self._deadline = self.callLater(self.site.request_timeout, self._expire)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _expire(self) -> None:
        self._deadline = None
        self.log.info(
            "Closed a connection from {source}: request not received within {seconds}s",
            source=getattr(self.transport.getPeer(), "host", "-") if self.transport else "-",
            seconds=self.site.request_timeout,
        )
        _raw_response(self, 408, "Request Timeout", {"status": "Request Timeout"})

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
    (more are closed as soon as they are accepted).
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
    ) -> None:
        super().__init__(
            resource,
            logFormatter=redacting_log_formatter,
            timeout=idle_timeout,
            reactor=reactor,
        )
        self.max_body = max_body
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self._full = False

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
