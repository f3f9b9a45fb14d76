"""
The site's limits, driven in memory: a real BrigadeSite and HTTPChannel over
a StringTransport, with a Clock for the deadlines.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource

from brigade_cr.site import BrigadeSite, redact_uri


class Echo(Resource):
    """Answers every POST with the length of the body it got."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytes] = []

    def render_POST(self, request: Any) -> bytes:
        body = request.content.read()
        self.bodies.append(body)
        return b"got %d" % len(body)


def connect(site: BrigadeSite) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "192.0.2.7", 40000))
    assert channel is not None
    transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 40000))
    channel.makeConnection(transport)
    return channel, transport


@pytest.fixture
def reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


def make_site(reactor: MemoryReactorClock, **kwargs: Any) -> tuple[BrigadeSite, Echo]:
    echo = Echo()
    kwargs.setdefault("max_body", 100)
    kwargs.setdefault("request_timeout", 10.0)
    return BrigadeSite(echo, reactor, **kwargs), echo


def test_body_within_limit(reactor: MemoryReactorClock) -> None:
    """A body at the limit reaches the resource whole."""
    site, echo = make_site(reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 100)
    assert echo.bodies == [b"a" * 100]
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")


def test_content_length_over_limit_refused_before_body(reactor: MemoryReactorClock) -> None:
    """A Content-Length over the limit gets 413 before any body is sent, and the connection closes."""
    site, echo = make_site(reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\nExpect: 100-continue\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert b"100 Continue" not in transport.value()
    assert transport.value().endswith(b'{"status": "Payload Too Large"}\n')
    assert transport.disconnecting
    channel.dataReceived(b"a" * 101)
    assert echo.bodies == []


def test_chunked_body_cut_off(reactor: MemoryReactorClock) -> None:
    """A chunked body is refused with 413 as soon as it passes the limit."""
    site, echo = make_site(reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    channel.dataReceived(b"32\r\n" + b"a" * 50 + b"\r\n")
    assert transport.value() == b""
    channel.dataReceived(b"33\r\n" + b"a" * 51 + b"\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert transport.disconnecting
    channel.dataReceived(b"5\r\naaaaa\r\n0\r\n\r\n")
    assert echo.bodies == []


def test_trickling_request_cut_at_deadline(reactor: MemoryReactorClock) -> None:
    """A client sending one byte a second is answered 408 and disconnected at the deadline."""
    site, echo = make_site(reactor, request_timeout=10.0, idle_timeout=60.0)
    channel, transport = connect(site)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde"
    sent = 0
    for byte in request:
        if transport.disconnecting:
            break
        channel.dataReceived(bytes([byte]))
        sent += 1
        reactor.advance(1)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert transport.disconnecting
    assert sent == 10
    assert echo.bodies == []


def test_silent_connection_cut_at_deadline(reactor: MemoryReactorClock) -> None:
    """A connection that sends nothing is closed at the request deadline, not the idle timeout."""
    site, _ = make_site(reactor, request_timeout=10.0, idle_timeout=600.0)
    _, transport = connect(site)
    reactor.advance(9.9)
    assert not transport.disconnecting
    reactor.advance(0.2)
    assert transport.disconnecting


def test_deadline_rearms_for_the_next_request(reactor: MemoryReactorClock) -> None:
    """A completed request disarms the deadline; the next request gets a fresh one."""
    site, echo = make_site(reactor, request_timeout=10.0, idle_timeout=600.0)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\na")
    assert echo.bodies == [b"a"]
    reactor.advance(30)
    assert not transport.disconnecting
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\n")
    reactor.advance(10.1)
    assert transport.disconnecting
    assert b"408 Request Timeout" in transport.value()


def test_connection_cap(reactor: MemoryReactorClock) -> None:
    """Connections beyond max_connections are refused; closing one makes room."""
    site, _ = make_site(reactor, max_connections=2)
    first, _ = connect(site)
    connect(site)
    assert site.open_connections == 2
    assert site.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)) is None
    first.connectionLost(None)
    assert site.open_connections == 1
    assert site.buildProtocol(IPv4Address("TCP", "192.0.2.8", 1)) is not None


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (b"/events/webhook/a", "/events/webhook/a"),
        (b"/events/webhook/a?token=s3cret", "/events/webhook/a?token=REDACTED"),
        (b"/x?commit=abc&token=s3cret&registry=acr", "/x?commit=abc&token=REDACTED&registry=acr"),
        (b"/x?Token=s3cret&other=1", "/x?Token=REDACTED&other=REDACTED"),
        (b"/x?token=a%20b", "/x?token=REDACTED"),
    ],
)
def test_redact_uri(uri: bytes, expected: str) -> None:
    """Every query value but commit and registry is redacted."""
    assert redact_uri(uri) == expected


def test_oversized_request_in_one_read_never_reaches_resource(reactor: MemoryReactorClock) -> None:
    """Headers and an oversized body arriving in one read are refused whole."""
    site, echo = make_site(reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 150\r\n\r\n" + b"a" * 150)
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert echo.bodies == []


def test_chunked_oversize_in_one_read_never_reaches_resource(reactor: MemoryReactorClock) -> None:
    """A complete chunked request over the limit in one read is refused whole."""
    site, echo = make_site(reactor)
    channel, transport = connect(site)
    channel.dataReceived(
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"96\r\n" + b"a" * 150 + b"\r\n0\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert echo.bodies == []
