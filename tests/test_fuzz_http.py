"""
Property-based tests of the whole HTTP surface: random paths, query strings,
headers and bodies through the real Klein app and twisted.web, in memory;
and arbitrary bytes, biased to what breaks HTTP stacks, through the real
BrigadeSite on the wire (``tests/wire.py``), with and without a spool.
"""

from __future__ import annotations

import json
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import attrs
from hypothesis import assume, event, example, given
from hypothesis import strategies as st
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from brigade_cr.core.gateway import Gateway
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.stores.spool import decode_record
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from brigade_cr.web.routes import make_site_resource
from tests.backend_contract import project_secret
from tests.helpers import result_of
from tests.wire import SECRET as WIRE_SECRET
from tests.wire import Wire, parse_responses

PAYLOADS = Path(__file__).parent / "payloads"

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SECRET = "fuzz-secret"

segments = st.sampled_from(["solo", "acme", "webapp", "brigade-x", "", "..", "%2F", "events", "webhook"]) | st.text(
    max_size=12
)
paths = st.one_of(
    st.lists(segments, max_size=5).map(lambda parts: "/events/webhook/" + "/".join(quote(p, safe="") for p in parts)),
    st.lists(segments, max_size=4).map(lambda parts: "/" + "/".join(quote(p, safe="") for p in parts)),
    st.just("/healthz"),
)
query_pairs = st.lists(
    st.tuples(st.sampled_from(["commit", "token", "registry", "x", ""]) | st.text(max_size=6), st.text(max_size=20)),
    max_size=4,
)
header_names = st.sampled_from(
    ["User-Agent", "Content-Type", "Authorization", "X-Hub-Signature-256", "X-GitHub-Event", "Expect", "X-Anything"]
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
json_leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
documents = st.recursive(
    json_leaves, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4), max_leaves=12
)
bodies = st.one_of(
    st.binary(max_size=300),
    documents.map(lambda d: json.dumps(d).encode()),
    st.sampled_from([b"{}", b'{"push_data": {"tag": "v1"}, "repository": {"repo_name": "a/b"}}']),
)
credentials = st.sampled_from(["none", "wrong", "right-token", "right-bearer"])


def harness() -> tuple[Any, MemoryBuilds]:
    """A StubTreq over a gateway, and its builds (Any: StubTreq's methods are set at run time)."""
    projects = MemoryProjects()
    projects.add(project_secret("solo", crGatewaySecret=SECRET.encode()))
    projects.add(project_secret("acme/webapp", crGatewaySecret=SECRET.encode()))
    projects.add(project_secret("open"))
    builds = MemoryBuilds()
    clock = Clock()
    clock.advance(NOW.timestamp())
    gateway = Gateway(
        projects,
        builds,
        clock,
        auth_failures=RateLimiter(clock, per_second=1.0, burst=3),
    )
    return StubTreq(make_site_resource(gateway, clock)), builds


@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]),
    path=paths,
    query=query_pairs,
    headers=st.dictionaries(header_names, header_values, max_size=4),
    body=bodies,
    credential=credentials,
)
def test_http_surface(
    method: str, path: str, query: list[tuple[str, str]], headers: dict[str, str], body: bytes, credential: str
) -> None:
    """
    No request gets a 5xx or logs an unhandled error, and no build is created
    without the project's secret.
    """
    treq, builds = harness()
    query = [(name, value) for name, value in query if name != "token"]
    if credential == "wrong":
        query.append(("token", "not-" + SECRET))
    elif credential == "right-token":
        query.append(("token", SECRET))
    elif credential == "right-bearer":
        headers = {**headers, "Authorization": "Bearer " + SECRET}
    url = "http://gw.example" + path + ("?" + urlencode(query) if query else "")
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    try:
        response: Any = treq.request(method, url, data=body, headers=headers)
        treq.flush()
        response = result_of(response)
        result_of(response.content())
        treq.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code < 500, (response.code, method, url)
    assert [event for event in observer if "log_failure" in event] == []
    if builds.secrets:
        assert credential.startswith("right"), url
        assert method == "POST"


@given(
    body=documents.map(lambda d: json.dumps(d).encode()),
    credential=credentials,
    headers=st.dictionaries(header_names.filter(lambda name: name != "Authorization"), header_values, max_size=3),
)
def test_builds_exactly_when_authenticated(body: bytes, credential: str, headers: dict[str, str]) -> None:
    """
    To a real project, a POSTed JSON document builds only with the right
    secret; with it, any JSON object is built or deliberately ignored, and
    anything else is a 400.
    """
    treq, builds = harness()
    url = "http://gw.example/events/webhook/solo"
    if credential == "wrong":
        url += "?token=not-" + SECRET
    elif credential == "right-token":
        url += "?token=" + SECRET
    elif credential == "right-bearer":
        headers = {**headers, "Authorization": "Bearer " + SECRET}
    response: Any = treq.post(url, data=body, headers=headers)
    treq.flush()
    response = result_of(response)
    answer = json.loads(result_of(response.content()))
    document = json.loads(body)
    if not credential.startswith("right"):
        assert response.code == 403
        assert builds.secrets == {}
    elif isinstance(document, dict):
        assert response.code == 200
        if "build_id" in answer:
            assert list(builds.secrets) == [answer["build_id"]]
        else:
            assert answer["ignored"]
            assert builds.secrets == {}
    else:
        assert response.code == 400
        assert builds.secrets == {}


# -- arbitrary bytes through the real site, on the wire -------------------------

# Fragments that have broken HTTP stacks, or this one: undecodable and
# surrogate percent-escapes, raw non-ASCII and control bytes, separators.
HOSTILE = [
    b"%ff",
    b"%FE",
    b"%C3%A9",
    b"%ED%B2%80",
    b"%ED%A0%80",
    b"%00",
    b"%0d%0a",
    b"%2F",
    b"%",
    b"\xa9",
    b"\x80",
    b"\x7f",
    b"\xff",
    b"\x00",
    b"\x1b",
    b"\r",
    b"\n",
    b"\r\n",
    b"\t",
    b" ",
    b"/",
    b"?",
    b"#",
    b"&",
    b";",
    b"=",
    b"+",
    b"\xc3\xa9",
    b"\xed\xb2\x80",
    b"token",
    b"commit",
    b"registry",
    b"solo",
    b"..",
]
fragments = st.lists(st.sampled_from(HOSTILE) | st.binary(max_size=3), max_size=6).map(b"".join)
# Most examples keep to bytes twisted.web lets through to the application
# (printable ASCII, and raw 0x7f-0xb0, which it wrongly allows), so that they
# reach the text checks, authentication and the body; one in ten is anything.
URL_BITS = [bit for bit in HOSTILE if not any(byte <= 0x20 or byte > 0xB0 for byte in bit)] + [b"%74oken", b"v1", b"a"]
VALUE_BITS = [bit for bit in HOSTILE if bit not in (b"\r", b"\n", b"\r\n", b"\x00")] + [b"Docker-Hook/1.0", b"sha256="]
mostly = st.sampled_from([False] * 9 + [True])


def _mostly(tame: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return mostly.flatmap(lambda hostile: fragments if hostile else tame)


url_fragments = _mostly(st.lists(st.sampled_from(URL_BITS), max_size=5).map(b"".join))
header_fragments = _mostly(st.lists(st.sampled_from(VALUE_BITS), max_size=5).map(b"".join))
half = st.sampled_from([False, True])


def _half(value: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return half.flatmap(lambda some: value if some else st.just(b""))


targets = st.tuples(
    st.sampled_from(
        [
            b"/events/webhook/solo",
            b"/events/webhook/acme/webapp",
            b"/events/webhook/acme/webapp/v1",
            b"/events/webhook/open",
            b"/events/webhook/",
            b"/healthz",
            b"/readyz",
            b"http://gw.example/events/webhook/solo",
            b"/",
        ]
    ),
    _half(url_fragments),
    _half(url_fragments.map(lambda query: b"?" + query)),
).map(b"".join)
# Python text that JSON encodes with surrogate escapes ("\udc80") among
# ordinary, astral and control characters.
hostile_text = st.text(
    alphabet=st.sampled_from(["a", "/", ":", "\u00e9", "\U0001f600", "\x00", "\n", "\udc80", "\udfff", "\ud800"])
    | st.characters(max_codepoint=0x7F),
    max_size=10,
)
hostile_documents = st.recursive(
    st.none() | st.integers() | hostile_text,
    lambda c: st.lists(c, max_size=3) | st.dictionaries(hostile_text, c, max_size=3),
    max_leaves=8,
)


def _dockerhub(tag: str, repo_name: str) -> bytes:
    return json.dumps(
        {"push_data": {"tag": tag, "pusher": "ci"}, "repository": {"repo_name": repo_name, "namespace": "acme"}}
    ).encode()


wire_bodies = st.one_of(
    st.builds(_dockerhub, st.sampled_from(["v1", "latest"]) | hostile_text, st.just("acme/webapp") | hostile_text),
    hostile_documents.map(lambda d: json.dumps({"d": d}).encode()),
    st.sampled_from([(PAYLOADS / "dockerhub_push.json").read_bytes(), b"{}"]),
    st.binary(max_size=200),
)
wire_headers = st.lists(
    st.tuples(
        _mostly(
            st.sampled_from(
                [b"User-Agent", b"Content-Type", b"X-GitHub-Event", b"X-Hub-Signature-256", b"Authorization", b"Host"]
            )
        ),
        header_fragments,
    ),
    max_size=4,
)


@attrs.frozen
class WireRequest:
    """One fuzzed request, and how it was made."""

    method: bytes
    data: bytes


@st.composite
def wire_requests(draw: st.DrawFn) -> WireRequest:
    method = draw(_mostly(st.sampled_from([b"POST"] * 6 + [b"GET", b"HEAD", b"PUT", b"OPTIONS"])))
    target = draw(targets)
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers = draw(wire_headers)
    credential = draw(st.sampled_from(["bearer", "token", "none"]))
    body = draw(wire_bodies)
    if credential == "token":
        target += (b"&" if b"?" in target else b"?") + b"token=" + WIRE_SECRET.encode()
    lines = [method + b" " + target + b" " + version, b"Host: gw.example"]
    lines += [name + b": " + value for name, value in headers]
    if credential == "bearer":
        lines.append(b"Authorization: Bearer " + WIRE_SECRET.encode())
    lines.append(b"Content-Length: %d" % len(body))
    head = b"\r\n".join(lines)
    # A CR LF CR LF inside a fuzzed value would end the header section early
    # and turn the rest into further requests: one request per example.
    assume(b"\r\n\r\n" not in head)
    return WireRequest(method, head + b"\r\n\r\n" + body)


def _spooled_records(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.build"))


def check_wire(stack: Wire, sent: WireRequest) -> None:
    """Send ``sent``, then assert the properties of the HTTP surface (see below)."""
    channel, transport = stack.connect()
    stack.send(channel, sent.data)
    if not transport.disconnecting and parse_responses(transport.value(), [sent.method])[0] == []:
        # Still arriving (or waiting to be): the request deadline must end it.
        stack.reactor.advance(stack.site.request_timeout + 1)
        assert transport.disconnecting
    first, rest = parse_responses(transport.value(), [sent.method])
    assert len(first) <= 1
    # Shown by --hypothesis-show-statistics: how far the examples got.
    event(f"answered {[response.code for response in first]}, closed {transport.disconnecting}")
    if not transport.disconnecting:
        assert len(first) == 1 and rest == b""
        stack.send(channel, b"GET /healthz HTTP/1.1\r\nHost: gw.example\r\n\r\n")
        both, rest = parse_responses(transport.value(), [sent.method, b"GET"])
        assert [(r.code, r.body) for r in both[1:]] == [(200, b"OK")], transport.value()
        assert rest == b""
    assert all(response.code < 500 for response in first), transport.value()
    assert stack.failures() == []
    for line in stack.site.access_log.getvalue().splitlines():
        assert line.isascii() and line.isprintable(), line
    assert WIRE_SECRET not in stack.log_text()


# Found by ``make fuzz``: twisted.web logged a HEAD's request, token and all.
HEAD_WITH_TOKEN = WireRequest(
    b"HEAD",
    b"HEAD /events/webhook/solo%ff?token=" + WIRE_SECRET.encode() + b" HTTP/1.1\r\nHost: gw.example\r\n"
    b"Content-Length: 2\r\n\r\n{}",
)
# Found by this test: werkzeug's BadHost escaped Klein as a 500.
EMPTY_HOST_LABEL = WireRequest(
    b"POST",
    b"POST /events/webhook/solo HTTP/1.1\r\nHost: gw.example\r\nHost: ..\r\nContent-Length: 2\r\n\r\n{}",
)


@example(sent=HEAD_WITH_TOKEN)
@example(sent=EMPTY_HOST_LABEL)
@given(sent=wire_requests())
def test_wire_bytes_in_memory(sent: WireRequest) -> None:
    """
    Arbitrary bytes in the method, target, headers and body, through the real
    BrigadeSite and WebhookSite over an in-memory transport with memory
    stores: never a 5xx, never an error logged, every access-log line one
    printable ASCII line without the secret, and every connection closed or
    still serving (a second, valid request on it is answered 200).
    """
    with Wire() as stack:
        check_wire(stack, sent)


@example(sent=HEAD_WITH_TOKEN)
@given(sent=wire_requests())
def test_wire_bytes_with_a_spool(sent: WireRequest) -> None:
    """
    The same through a SpooledBuilds in front of MemoryBuilds, and nothing
    is spooled that cannot be delivered: every record left decodes and the
    store accepts it, none is dead-lettered or quarantined, and every build
    the store holds has text that encodes.
    """
    with tempfile.TemporaryDirectory() as directory:
        spool = Path(directory) / "spool"
        with Wire(spool=spool) as stack:
            check_wire(stack, sent)
            store = MemoryBuilds()
            for record in _spooled_records(spool):
                build = decode_record(record.read_bytes())
                assert result_of(store.submit(build)).build_name == build.name
            assert not list((spool / "dead-letter").glob("*"))
            assert not list((spool / "quarantine").glob("*"))
            assert stack.spool is not None and stack.spool.stats().dead_lettered == 0
            for secret in stack.inner.secrets.values():
                json.dumps(secret, ensure_ascii=False).encode("utf-8")
