"""
The whole HTTP stack in memory, at the byte level: a real ``BrigadeSite``
serving the real ``WebhookSite`` over a ``StringTransport``, on a
``MemoryReactorClock``, with memory stores (optionally a ``SpooledBuilds``
with ``InlineIO`` in front of ``MemoryBuilds``). The access log is kept in
memory, and every ``twisted.logger`` event is recorded, so tests can read
what would have been logged.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.testing import EventLoggingObserver, MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import SpooledBuilds
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from brigade_cr.web.routes import WebhookSite
from brigade_cr.web.site import BrigadeSite
from tests.backend_contract import project_secret
from tests.helpers import result_of

SECRET = "wire-secret-0123456789"
NOW = 1_795_000_000.0
PEER = IPv4Address("TCP", "192.0.2.7", 40000)


class MemoryLogSite(BrigadeSite):
    """A ``BrigadeSite`` whose access log is a ``StringIO``."""

    def _openLogFile(self, path: Any) -> Any:
        return self.access_log

    access_log: io.StringIO


@attrs.define
class Response:
    """One HTTP response as it went out on the wire."""

    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes

    @property
    def code(self) -> int:
        return int(self.status_line.split(b" ", 2)[1])

    def header(self, name: bytes) -> bytes | None:
        found = None
        for key, value in self.headers:
            if key.lower() == name.lower():
                found = value
        return found


def parse_responses(data: bytes, methods: list[bytes]) -> tuple[list[Response], bytes]:
    """
    The complete responses in ``data`` (answering requests made with
    ``methods``, in order, so that a HEAD's has no body), and whatever bytes
    follow them.
    """
    responses: list[Response] = []
    pending = list(methods)
    while pending:
        head, separator, rest = data.partition(b"\r\n\r\n")
        if not separator:
            break
        lines = head.split(b"\r\n")
        headers = [(name.strip(), value.strip()) for name, _, value in (line.partition(b":") for line in lines[1:])]
        response = Response(lines[0], headers, b"")
        if 100 <= response.code < 200:
            # An interim response (100 Continue): the final one follows.
            data = rest
            continue
        method = pending.pop(0)
        length = response.header(b"content-length")
        if method == b"HEAD" or response.code in (204, 304):
            body, data = b"", rest
        elif response.header(b"transfer-encoding") == b"chunked":
            chunks = []
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                chunks.append(rest[:size])
                rest = rest[size + 2 :]
                if size == 0:
                    break
            body, data = b"".join(chunks), rest
        elif length is not None:
            body, data = rest[: int(length)], rest[int(length) :]
        else:
            body, data = rest, b""
        response.body = body
        responses.append(response)
    return responses, data


class Wire:
    """
    The stack (see the module docstring). Projects ``solo`` and
    ``acme/webapp`` have the secret ``SECRET``; ``open`` has none. With
    ``spool``, builds go through a ``SpooledBuilds`` in that directory, which
    the caller must ``close()``. With ``metrics``, the gateway and the site
    count into it.
    """

    def __init__(self, spool: Path | None = None, metrics: GatewayMetrics | None = None, **site_options: Any) -> None:
        self.reactor = MemoryReactorClock()
        self.reactor.advance(NOW)
        self.projects = MemoryProjects()
        for name in ("solo", "acme/webapp"):
            self.projects.add(project_secret(name, crGatewaySecret=SECRET.encode()))
        self.projects.add(project_secret("open"))
        self.inner = MemoryBuilds()
        self.spool: SpooledBuilds | None = None
        builds: IBuilds = self.inner
        if spool is not None:
            self.spool = SpooledBuilds(spool, self.inner, self.reactor, InlineIO())
            result_of(self.spool.start())
            builds = self.spool
        self.gateway = Gateway(
            self.projects,
            builds,
            self.reactor,
            auth_failures=RateLimiter(self.reactor, per_second=1.0, burst=3),
            metrics=metrics,
        )
        self.webhooks = WebhookSite(self.gateway, self.reactor)
        site_options.setdefault("max_body", 4096)
        site_options.setdefault("request_timeout", 10.0)
        site_options.setdefault("idle_timeout", 60.0)
        self.site = MemoryLogSite(self.webhooks.resource(), self.reactor, metrics=metrics, **site_options)
        self.site.access_log = io.StringIO()
        self.site.logPath = "memory"
        self.site.startFactory()
        self.events = EventLoggingObserver()
        globalLogPublisher.addObserver(self.events)

    def close(self) -> None:
        """Stop recording log events, the site and the spool."""
        globalLogPublisher.removeObserver(self.events)
        self.site.stopFactory()
        if self.spool is not None:
            stopping = self.spool.stop(0)
            self.reactor.advance(0)
            result_of(stopping)

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> tuple[Any, StringTransport]:
        """A new connection: the channel and its transport."""
        channel = self.site.buildProtocol(PEER)
        assert channel is not None
        transport = StringTransport(peerAddress=PEER)
        channel.makeConnection(transport)
        return channel, transport

    def send(self, channel: Any, data: bytes, settle: float = 3.0) -> None:
        """Deliver ``data`` on ``channel``, then let ``settle`` seconds pass (the spool's wait for its store)."""
        channel.dataReceived(data)
        for _ in range(int(settle * 10)):
            self.reactor.advance(0.1)

    def exchange(self, data: bytes, methods: list[bytes] | None = None) -> tuple[list[Response], StringTransport]:
        """``data`` on a new connection: the responses to it and the transport."""
        channel, transport = self.connect()
        self.send(channel, data)
        if methods is None:
            methods = [data.split(b" ", 1)[0]]
        responses, _ = parse_responses(transport.value(), methods)
        return responses, transport

    def log_text(self) -> str:
        """Everything logged: the access log, then every event, formatted (with tracebacks)."""
        lines = [self.site.access_log.getvalue()]
        for event in self.events:
            lines.append(formatEvent(event))
            failure = event.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
        return "\n".join(lines)

    def failures(self) -> list[dict[str, Any]]:
        """The logged events that carry a failure (an error with its traceback)."""
        return [event for event in self.events if "log_failure" in event]


def request(
    method: str,
    target: bytes,
    body: bytes = b"",
    headers: list[tuple[bytes, bytes]] | None = None,
    version: bytes = b"HTTP/1.1",
    bearer: bool = False,
) -> bytes:
    """The bytes of one request (with a ``Host``, and a ``Content-Length`` for a body)."""
    lines = [method.encode() + b" " + target + b" " + version, b"Host: gw.example"]
    for name, value in headers or []:
        lines.append(name + b": " + value)
    if bearer:
        lines.append(b"Authorization: Bearer " + SECRET.encode())
    if body or method == "POST":
        lines.append(b"Content-Length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
