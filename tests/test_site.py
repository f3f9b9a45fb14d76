"""
The site's limits, driven in memory: a real BrigadeSite and HTTPChannel over
a StringTransport, with a Clock for the deadlines; and the whole stack (the
real WebhookSite behind it, ``tests/wire.py``) byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.web.http import parse_qs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.core.errors import InvalidText
from brigade_cr.core.interfaces import ROUTES
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.web.routes import WEBHOOK_PREFIX
from brigade_cr.web.site import (
    REASONS,
    BrigadeSite,
    QueryItem,
    log_text,
    origin_form,
    query_items,
    query_pairs,
    query_text,
    redact_uri,
    route_of,
    split_target,
)
from tests.wire import SECRET, Wire, parse_responses, request

PAYLOADS = Path(__file__).parent / "payloads"


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


# -- the request target, one parser -------------------------------------------


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        (b"/a", b"/a", None),
        (b"/a?", b"/a", b""),
        (b"/a?b=1?c=2", b"/a", b"b=1?c=2"),
        (b"/a/b/c#?token=s", b"/a/b/c#", b"token=s"),
        (b"/a?token=s#frag", b"/a", b"token=s#frag"),
    ],
)
def test_split_target(target: bytes, path: bytes, query: bytes | None) -> None:
    """The target splits at the first ?, as twisted.web splits it (a # before it is part of the path)."""
    assert split_target(target) == (path, query)


@pytest.mark.parametrize(
    "target",
    [
        b"/x?token=a&token=b&x=%41%42+c;y=2",
        b"/x?%74oken=s&tok%65n=t&=v&novalue&&a=",
        b"/x/y#?token=s&commit=%C3%A9",
        b"/x?a=%ff&%fe=b&c=%zz",
    ],
)
def test_query_pairs_are_what_twisted_reads(target: bytes) -> None:
    """query_pairs holds exactly the parameters twisted.web puts in request.args, in the order sent."""
    twisted_args = parse_qs(split_target(target)[1] or b"", 1)
    pairs = query_pairs(target)
    grouped: dict[bytes, list[bytes]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    assert grouped == twisted_args


def test_query_items() -> None:
    """Items keep their raw bytes; names and values are decoded; an item without = has neither."""
    assert query_items(b"/x?%74oken=a+b;c&d=%ff") == (
        QueryItem(b"%74oken=a+b", b"token", b"a b"),
        QueryItem(b"c", None, None),
        QueryItem(b"d=%ff", b"d", b"\xff"),
    )
    assert query_items(b"/x") == ()
    # Read again (remembered), the same items.
    assert query_items(b"/x?%74oken=a+b;c&d=%ff")[0] == QueryItem(b"%74oken=a+b", b"token", b"a b")


def test_query_text_refuses_non_utf8() -> None:
    """Query text is UTF-8 or InvalidText, which names the query and not its content."""
    assert query_text(b"/x?a=%C3%A9&b=c") == [("a", "\u00e9"), ("b", "c")]
    for target in (b"/x?commit=%ff", b"/x?%ff=1", b"/x?a=%ED%B2%80"):
        with pytest.raises(InvalidText) as caught:
            query_text(target)
        assert caught.value.message == "the query is not valid UTF-8"


@pytest.mark.parametrize(
    ("target", "origin", "host"),
    [
        (b"/events/webhook/a", b"/events/webhook/a", None),
        (b"http://gw.example/events/webhook/a?token=s", b"/events/webhook/a?token=s", b"gw.example"),
        (b"HTTPS://gw.example:8443/healthz", b"/healthz", b"gw.example:8443"),
        (b"http://user:pw@gw.example/healthz", b"/healthz", b"gw.example"),
        (b"http://gw.example", b"/", b"gw.example"),
        (b"http://gw.example?x=1", b"/?x=1", b"gw.example"),
        (b"ftp://gw.example/healthz", b"ftp://gw.example/healthz", None),
        (b"*", b"*", None),
    ],
)
def test_origin_form(target: bytes, origin: bytes, host: bytes | None) -> None:
    """An absolute-form http(s) target becomes its origin form and its host (without user information)."""
    assert origin_form(target) == (origin, host)


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (b"plain", "plain"),
        (b'a"b\\c', 'a\\"b\\\\c'),
        (b"\x00\x1b[31m\r\n\x7f", "\\x00\\x1b[31m\\r\\n\\x7f"),
        (b"\xa9\xff", "\\xa9\\xff"),
        ("\u00e9\udc80", "\\xc3\\xa9\\\\udc80"),
    ],
)
def test_log_text_is_printable_ascii(value: bytes | str, shown: str) -> None:
    """log_text escapes quotes, backslashes, control characters, non-ASCII bytes and lone surrogates."""
    assert log_text(value) == shown


# -- the whole stack, byte for byte ---------------------------------------------


@pytest.fixture
def wire() -> Iterator[Wire]:
    # Probes logged: the tests below use /healthz as the simplest target.
    with Wire(log_probes=True) as stack:
        yield stack


def access_lines(wire: Wire) -> list[str]:
    return wire.site.access_log.getvalue().splitlines()


def test_non_ascii_query_answers_closes_and_logs(wire: Wire) -> None:
    """
    GET /healthz?%C3%A9=1 HTTP/1.0 is answered, logged as one escaped ASCII
    line and its connection closed (the formatter used to raise inside
    Request.finish, leaving the connection open past every timeout).
    """
    responses, transport = wire.exchange(b"GET /healthz?%C3%A9=1 HTTP/1.0\r\n\r\n")
    assert [(r.status_line, r.body) for r in responses] == [(b"HTTP/1.0 200 OK", b"OK")]
    assert transport.disconnecting
    assert [line.split(" - - ", 1)[1].split(" ", 2)[2] for line in access_lines(wire)] == [
        '"GET /healthz?%C3%A9=REDACTED HTTP/1.0" 200 2 "-" "-" latency_ms=0.0 build=-'
    ]
    assert wire.failures() == []


def test_access_log_lines_are_ascii(wire: Wire) -> None:
    """Raw non-ASCII bytes in the target and control characters in the user agent are escaped."""
    channel, transport = wire.connect()
    wire.send(
        channel, request("GET", b"/healthz\xa9?commit=\xa9", headers=[(b"User-Agent", b"evil\x1b[2J\x01\xc3\xa9")])
    )
    wire.send(channel, request("GET", b"/healthz"))
    assert [r.code for r in parse_responses(transport.value(), [b"GET", b"GET"])[0]] == [400, 200]
    lines = access_lines(wire)
    assert len(lines) == 2
    assert all(line.isascii() and line.isprintable() for line in lines)
    assert lines[0].endswith(
        '"GET /healthz\\xa9?commit=\\xa9 HTTP/1.1" 400 67 "-" "evil\\x1b[2J\\x01\\xc3\\xa9" latency_ms=0.0 build=-'
    )


def test_failed_finish_closes_the_connection_and_logs_once(wire: Wire) -> None:
    """
    When finishing a response fails (here, the access-log formatter raises),
    the connection is closed, aborted if the peer does not let go, and the
    failure is logged exactly once.
    """

    def broken(timestamp: str, request: Any) -> str:
        raise ValueError("formatter bug")

    wire.site._logFormatter = broken
    channel, transport = wire.connect()
    wire.send(channel, request("GET", b"/healthz"))
    responses, rest = parse_responses(transport.value(), [b"GET"])
    assert [(r.code, r.body) for r in responses] == [(200, b"OK")]
    assert rest == b""
    assert transport.disconnecting
    failures = wire.failures()
    assert [formatEvent(event) for event in failures] == [
        "Could not finish the response to 192.0.2.7; closed the connection"
    ]
    assert failures[0]["log_failure"].type is ValueError
    # A pipelined request behind it is never served.
    wire.send(channel, request("GET", b"/healthz"))
    assert parse_responses(transport.value(), [b"GET", b"GET"])[0] == responses
    # StringTransport.abortConnection sets ``disconnected``.
    assert not transport.disconnected
    wire.reactor.advance(channel.abortTimeout)
    assert transport.disconnected


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"/events/webhook/%ff", "the path is not valid UTF-8"),
        (b"/events/webhook/solo%ED%B2%80", "the path is not valid UTF-8"),
        (b"/events/webhook/\xa9", "the path is not valid UTF-8"),
        (b"/events/webhook/solo?commit=%ff", "the query is not valid UTF-8"),
        (b"/events/webhook/solo?%ff=1", "the query is not valid UTF-8"),
        (b"/events/webhook/solo?token=%ff", "the query is not valid UTF-8"),
    ],
)
def test_non_utf8_url_is_a_json_400(wire: Wire, target: bytes, reason: str) -> None:
    """A URL whose text is not UTF-8 gets a JSON 400 naming the part; the connection stays usable."""
    channel, transport = wire.connect()
    wire.send(channel, request("POST", target, b"{}", bearer=True))
    wire.send(channel, request("GET", b"/healthz"))
    responses, rest = parse_responses(transport.value(), [b"POST", b"GET"])
    assert [(r.status_line, r.header(b"content-type"), r.body) for r in responses] == [
        (
            b"HTTP/1.1 400 Bad Request",
            b"application/json",
            json.dumps({"status": "Bad Request", "reason": reason}).encode() + b"\n",
        ),
        (b"HTTP/1.1 200 OK", b"text/plain; charset=utf-8", b"OK"),
    ]
    assert rest == b""
    assert not transport.disconnecting
    assert wire.inner.secrets == {}


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        (b"\xff\xfe", "the Host header is not valid UTF-8"),
        (b"..", "the Host header is not a valid host name"),
        (b"a..b:8080", "the Host header is not a valid host name"),
        (b"a" * 64 + b".example", "the Host header is not a valid host name"),
    ],
)
def test_bad_host_is_a_json_400(wire: Wire, host: bytes, reason: str) -> None:
    """
    A Host header Klein could not decode, or werkzeug could not route, gets
    the JSON 400 (not Klein's HTML page, nor werkzeug's BadHost as a 500).
    """
    responses, _ = wire.exchange(b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert [(r.code, r.body) for r in responses] == [
        (400, json.dumps({"status": "Bad Request", "reason": reason}).encode() + b"\n")
    ]
    assert wire.failures() == []


@pytest.mark.parametrize("host", [b"gw.example:8080", b"[::1]:8080", b"-x", b"gw.example.", b"\xc3\xa9.example"])
def test_odd_but_routable_hosts_are_served(wire: Wire, host: bytes) -> None:
    """Hosts werkzeug can route are served whatever they look like (the gateway does not route on the host)."""
    responses, _ = wire.exchange(b"GET /healthz HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert [(r.code, r.body) for r in responses] == [(200, b"OK")]


@pytest.mark.parametrize(
    "data",
    [
        b"POST /events/webhook/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nNo-Colon\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nX: a\x00b\r\n\r\n",
        b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ],
)
def test_unparseable_request_is_a_json_400(wire: Wire, data: bytes) -> None:
    """What twisted.web cannot parse gets a JSON 400 (not a bare status line) and the connection closes."""
    _, transport = wire.exchange(data)
    assert transport.value() == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 64\r\n"
        b'Connection: close\r\n\r\n{"status": "Bad Request", "reason": "the request is malformed"}\n'
    )
    assert transport.disconnecting


HEADERS_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nContent-Length: 46\r\n"
    b'Connection: close\r\n\r\n{"status": "Request Header Fields Too Large"}\n'
)


@pytest.mark.parametrize(
    "data",
    [
        # One line over twisted.web's 16 KiB line limit.
        b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n",
        # A request line alone over it.
        b"GET /healthz?" + b"a" * 17000 + b" HTTP/1.1\r\n\r\n",
        # Many lines, together over 16 KiB.
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 100) for i in range(200)) + b"\r\n",
        # Over 500 header fields.
        b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(501)) + b"\r\n",
    ],
)
def test_header_section_over_the_limit_is_431(wire: Wire, data: bytes) -> None:
    """A header section over the limit is answered 431 with a JSON body, and the connection closes."""
    _, transport = wire.exchange(data)
    assert transport.value() == HEADERS_431
    assert transport.disconnecting


def test_header_section_within_the_limit_is_served(wire: Wire) -> None:
    """500 header fields, within 16 KiB, are fine."""
    data = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: a\r\n" % i for i in range(499)) + b"Host: x\r\n\r\n"
    responses, _ = wire.exchange(data)
    assert [r.code for r in responses] == [200]


def test_absolute_form_target_is_served(wire: Wire) -> None:
    """POST http://host/events/webhook/... is served as its origin form, with the target's host."""
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    channel, transport = wire.connect()
    wire.send(
        channel,
        request("POST", b"http://user:pw@gw.example/events/webhook/solo?token=" + SECRET.encode(), body),
    )
    wire.send(channel, request("GET", b"HTTP://gw.example/healthz"))
    responses, _ = parse_responses(transport.value(), [b"POST", b"GET"])
    assert [r.code for r in responses] == [200, 200]
    answer = json.loads(responses[0].body)
    assert answer["event_provider"] == "dockerhub"
    assert list(wire.inner.secrets) == [answer["build_id"]]
    targets = [line.split('"')[3] for line in access_lines(wire)]
    assert targets == ["POST /events/webhook/solo?token=REDACTED HTTP/1.1", "GET /healthz HTTP/1.1"]
    assert "pw" not in wire.log_text()


class Status(Resource):
    """Answers /<code> with that status."""

    isLeaf = True

    def render(self, request: Any) -> bytes:
        request.setResponseCode(int(request.postpath[0]))
        return b""


@pytest.mark.parametrize(("code", "reason"), sorted(REASONS.items()))
def test_every_status_has_its_reason_phrase(reactor: MemoryReactorClock, code: int, reason: bytes) -> None:
    """Every status the gateway sends goes out with its RFC 9110 reason phrase (429 and 431 included)."""
    site = BrigadeSite(Status(), reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"GET /%d HTTP/1.1\r\nHost: x\r\n\r\n" % code)
    assert transport.value().startswith(b"HTTP/1.1 %d %s\r\n" % (code, reason))


def test_reason_phrases() -> None:
    """The table holds every status the gateway sends, with the RFC 9110 phrase (413's RFC 7231 name)."""
    assert REASONS == {
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


def test_429_from_the_gateway_has_its_reason(wire: Wire) -> None:
    """The failed-authentication limit's 429 goes out as 429 Too Many Requests."""
    wire.gateway.auth_failures = RateLimiter(wire.reactor, per_second=1 / 600, burst=3)
    codes = []
    for _ in range(4):
        responses, _ = wire.exchange(request("POST", b"/events/webhook/solo?token=guess", b"{}"))
        codes.append(responses[0].status_line)
    assert codes == [b"HTTP/1.1 403 Forbidden"] * 3 + [b"HTTP/1.1 429 Too Many Requests"]


# -- redaction: whatever the authenticator reads never reaches a log --------------

QUOTED_SECRET = "".join(f"%{byte:02X}" for byte in SECRET.encode())


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("/events/webhook/solo?token=S", 200),
        ("/events/webhook/acme/webapp/c#?token=S", 200),
        ("/events/webhook/solo?token=wrong&token=S", 200),
        ("/events/webhook/solo?token=S&token=wrong", 403),
        ("/events/webhook/solo?%74oken=S", 200),
        ("/events/webhook/solo?tok%65n=S", 200),
        ("/events/webhook/solo?token=Q", 200),
        ("/events/webhook/solo?a=1;token=S", 200),
        ("/events/webhook/solo?commit=c&token=S&registry=dockerhub", 200),
        ("/events/webhook/solo?token=S#fragment", 403),
        ("/events/webhook/solo?token=S?token=S", 403),
        ("/events/webhook/solo?S", 403),
        ("http://gw.example/events/webhook/solo?token=S", 200),
        ("http://x:S@gw.example/events/webhook/solo?token=S", 200),
    ],
)
def test_no_form_of_target_logs_the_secret(wire: Wire, target: str, code: int) -> None:
    """
    Over every form of target (fragment before the query, repeated,
    percent-encoded or ;-separated parameters, absolute form), the delivery
    is authenticated exactly as the query reads, and the secret appears in no
    log line, plain or percent-encoded.
    """
    raw = target.replace("S", SECRET).replace("Q", QUOTED_SECRET).encode()
    body = (PAYLOADS / "dockerhub_push.json").read_bytes()
    responses, _ = wire.exchange(request("POST", raw, body))
    assert [r.code for r in responses] == [code]
    logged = wire.log_text()
    assert len(access_lines(wire)) == 1
    assert SECRET not in logged
    assert QUOTED_SECRET not in logged
    assert QUOTED_SECRET.lower() not in logged


@pytest.mark.parametrize(
    "content_type", [b"multipart/form-data", b"multipart/form-data; boundary=x", b"application/x-www-form-urlencoded"]
)
def test_bodies_are_never_parsed_as_forms(wire: Wire, content_type: bytes) -> None:
    """
    A form content type does not make twisted.web parse the body (it would
    refuse these multipart ones and close): it reaches the gateway as sent.
    """
    responses, transport = wire.exchange(
        request("POST", b"/events/webhook/solo", b"not json", headers=[(b"Content-Type", content_type)], bearer=True)
    )
    assert [(r.code, r.body) for r in responses] == [
        (400, b'{"status": "Malformed body", "reason": "body is not JSON"}\n')
    ]
    assert not transport.disconnecting


def test_head_with_bad_text_logs_no_token(wire: Wire) -> None:
    """A HEAD answered 400 has the body's length and no body, and the token reaches no log line."""
    responses, _ = wire.exchange(request("HEAD", b"/healthz%ff?token=" + SECRET.encode()))
    assert [(r.code, r.header(b"content-length"), r.body) for r in responses] == [(400, b"67", b"")]
    assert SECRET not in wire.log_text()


def test_request_repr_is_redacted(wire: Wire) -> None:
    """twisted.web logs requests by their repr: it shows the target as the access log does."""
    seen: list[str] = []

    class Peek(Resource):
        isLeaf = True

        def render(self, request: Any) -> bytes:
            seen.append(repr(request))
            return b""

    site = BrigadeSite(Peek(), wire.reactor)
    channel, _ = connect(site)
    channel.dataReceived(b"GET /x?token=" + SECRET.encode() + b"&commit=\xa9 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(seen) == 1
    assert seen[0].startswith("<LimitedRequest at 0x")
    assert seen[0].endswith(" method=GET uri=/x?token=REDACTED&commit=\\xa9 clientproto=HTTP/1.1>")


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (b"/a/b/c#?token=s3cret", "/a/b/c#?token=REDACTED"),
        (b"/x?%74oken=s3cret&commit=%C3%A9", "/x?%74oken=REDACTED&commit=%C3%A9"),
        (b"/x?s3cret&&commit=1", "/x?REDACTED&&commit=1"),
        (b"/x?a=1;token=s3cret", "/x?a=REDACTED&token=REDACTED"),
        (b"/x?commit=\xa9&\xa9=\xa9", "/x?commit=\\xa9&\\xa9=REDACTED"),
        (b"/x?", "/x?"),
    ],
)
def test_redact_uri_forms(uri: bytes, expected: str) -> None:
    """Redaction uses the authenticator's parser: decoded names, Twisted's split, everything escaped."""
    assert redact_uri(uri) == expected


# -- the request latency histogram -------------------------------------------------------


class Routed(Resource):
    """Answers by path: a webhook 202 after 0.25 s, /healthz 200, /readyz 503, anything else 404."""

    isLeaf = True

    def __init__(self, reactor: MemoryReactorClock) -> None:
        super().__init__()
        self.reactor = reactor

    def render(self, request: Any) -> Any:
        if request.path.startswith(b"/events/webhook/"):

            def answer() -> None:
                request.setResponseCode(202)
                request.write(b"queued")
                request.finish()

            self.reactor.callLater(0.25, answer)
            return NOT_DONE_YET
        request.setResponseCode({b"/healthz": 200, b"/readyz": 503}.get(request.path, 404))
        return b"answer"


def timed(metrics: GatewayMetrics, route: str, code: str) -> tuple[float | None, float | None]:
    """The histogram's count and sum for one route and status class."""
    labels = {"route": route, "code": code}
    sample = metrics.registry.get_sample_value
    return (
        sample("brigade_cr_http_request_duration_seconds_count", labels),
        sample("brigade_cr_http_request_duration_seconds_sum", labels),
    )


def test_answers_are_timed_by_route_and_status_class(reactor: MemoryReactorClock) -> None:
    """
    Each answer is observed once under its route (a fixed name, whatever the
    query or target form) and status class, timed on the site's clock from
    the request's first line; probes are observed though not logged.
    """
    metrics = GatewayMetrics()
    site = BrigadeSite(Routed(reactor), reactor, metrics=metrics)
    for target in (
        b"/events/webhook/acme/app?token=secret",
        b"/healthz",
        b"/healthz?x=1",
        b"http://gw.example/readyz",
        b"/nope",
        b"/events/webhook",
        b"/healthz/",
    ):
        channel, _ = connect(site)
        channel.dataReceived(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    reactor.advance(0.2)
    assert timed(metrics, "webhook", "2xx") == (None, None)
    reactor.advance(0.05)
    assert timed(metrics, "webhook", "2xx") == (1.0, 0.25)
    assert timed(metrics, "healthz", "2xx") == (2.0, 0.0)
    assert timed(metrics, "readyz", "5xx") == (1.0, 0.0)
    assert timed(metrics, "other", "4xx") == (3.0, 0.0)
    sample = metrics.registry.get_sample_value
    bucket = "brigade_cr_http_request_duration_seconds_bucket"
    assert sample(bucket, {"route": "webhook", "code": "2xx", "le": "0.1"}) == 0
    assert sample(bucket, {"route": "webhook", "code": "2xx", "le": "0.25"}) == 1
    routes = {s.labels["route"] for family in metrics.registry.collect() for s in family.samples if "route" in s.labels}
    assert routes == {"webhook", "healthz", "readyz", "other"}


def test_refusals_are_timed(reactor: MemoryReactorClock) -> None:
    """
    The site's own refusals are observed too: a 413 for a webhook at once,
    a 408 at the deadline (from the connection, for its first request, by
    the path of the request line when it came), a malformed request and a
    header section over the limit (431).
    """
    metrics = GatewayMetrics()
    site, _ = make_site(reactor, request_timeout=10.0, metrics=metrics)
    channel, _ = connect(site)
    channel.dataReceived(b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
    assert timed(metrics, "webhook", "4xx") == (1.0, 0.0)
    late, transport = connect(site)
    reactor.advance(4.0)
    late.dataReceived(b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\n")
    reactor.advance(6.0)
    assert transport.value().startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert timed(metrics, "webhook", "4xx") == (2.0, 10.0)
    connect(site)
    reactor.advance(10.0)
    assert timed(metrics, "other", "4xx") == (1.0, 10.0)
    garbled, _ = connect(site)
    garbled.dataReceived(b"GARBAGE\r\n\r\n")
    big, transport = connect(site)
    big.dataReceived(b"GET /healthz HTTP/1.1\r\nX-Big: " + b"a" * 17000 + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 431 ")
    assert timed(metrics, "other", "4xx") == (2.0, 10.0)
    assert timed(metrics, "healthz", "4xx") == (1.0, 0.0)


def test_no_metrics_no_observation(reactor: MemoryReactorClock) -> None:
    """Without metrics the site answers as before (nothing to observe into)."""
    site = BrigadeSite(Routed(reactor), reactor)
    channel, transport = connect(site)
    channel.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert site.metrics is None


@pytest.mark.parametrize(
    "path, route",
    [
        (WEBHOOK_PREFIX.encode() + b"solo", "webhook"),
        (WEBHOOK_PREFIX.encode(), "webhook"),
        (b"/healthz", "healthz"),
        (b"/readyz", "readyz"),
        (b"/readyz/", "other"),
        (b"/metrics", "other"),
        (b"/", "other"),
        (None, "other"),
    ],
)
def test_route_of(path: bytes | None, route: str) -> None:
    """Paths map to the fixed routes, with routes.py's webhook prefix; anything else is other."""
    assert route_of(path) == route
    assert route in ROUTES


def test_wire_delivery_is_timed() -> None:
    """Through the real WebhookSite: a delivery answered 200 is one webhook 2xx, a probe one healthz 2xx."""
    metrics = GatewayMetrics()
    with Wire(metrics=metrics) as wire:
        body = (PAYLOADS / "acr_push.json").read_bytes()
        [answer], _ = wire.exchange(request("POST", b"/events/webhook/solo", body, bearer=True))
        assert answer.code == 200
        [probe], _ = wire.exchange(request("GET", b"/healthz"))
        assert probe.code == 200
    assert timed(metrics, "webhook", "2xx") == (1.0, 0.0)
    assert timed(metrics, "healthz", "2xx") == (1.0, 0.0)


def test_refused_request_is_not_answered_again_at_its_deadline(reactor: MemoryReactorClock) -> None:
    """After a 413 the request's deadline is disarmed: a peer slow to read the close gets no second (408) answer."""
    metrics = GatewayMetrics()
    site, _ = make_site(reactor, request_timeout=10.0, metrics=metrics)
    channel, transport = connect(site)
    channel.dataReceived(b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n")
    reactor.advance(10.1)
    assert transport.value().count(b"HTTP/1.1 ") == 1
    assert timed(metrics, "webhook", "4xx") == (1.0, 0.0)


@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=8))
def test_any_target_is_counted_under_a_fixed_route(targets: list[bytes]) -> None:
    """Whatever the target, the histogram's labels are a fixed route and a status class (promise P10)."""
    reactor = MemoryReactorClock()
    metrics = GatewayMetrics()
    site = BrigadeSite(Routed(reactor), reactor, max_body=100, metrics=metrics)
    for target in targets:
        channel, _ = connect(site)
        channel.dataReceived(
            b"GET /" + target.replace(b"\r", b"").replace(b"\n", b"") + b" HTTP/1.1\r\nHost: x\r\n\r\n"
        )
    reactor.advance(11.0)
    labels = [s.labels for family in metrics.registry.collect() for s in family.samples if "route" in s.labels]
    assert labels
    assert {label["route"] for label in labels} <= set(ROUTES)
    assert {label["code"] for label in labels} <= {"2xx", "4xx", "5xx"}


def test_a_connection_asks_its_local_address_once() -> None:
    """
    Requests on one connection learn the gateway's own address (``getHost``)
    from the channel, which asks the transport (a system call on TCP) once.
    """
    with Wire() as wire:
        channel, transport = wire.connect()
        asked: list[object] = []
        real = transport.getHost

        def counting() -> Any:
            asked.append(None)
            return real()

        transport.getHost = counting  # type: ignore[method-assign]
        hosts = []

        class Recording(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                hosts.append(request.getHost())
                return b"ok"

        wire.site.resource = Recording()
        for _ in range(3):
            wire.send(channel, request("GET", b"/healthz"), settle=0.1)
        assert transport.value().count(b"HTTP/1.1 200 ") == 3
        assert hosts == [real()] * 3
        assert len(asked) == 1
