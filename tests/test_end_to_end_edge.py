"""
End to end, at the edge: bytes the old gateway mishandled (a non-ASCII query
that pinned its connection, text that is not UTF-8, absolute-form targets, an
oversized header section, targets that hid a token from the redactor), sent
raw to a real ``twistd -n brigade-cr`` process against the fake Kubernetes API.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.e2e import AUTH, PAYLOADS, SECRET, builds, new_builds
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess
from tests.wire import parse_responses

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

GATEWAY_ARGS = ["--auth-failure-burst", "100000", "--request-timeout", "5", "--idle-timeout", "60"]
BODY = (PAYLOADS / "dockerhub_push.json").read_bytes()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send raw bytes, then read until the server closes or ``timeout`` passes: what came, and whether it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return received, True
            received += chunk
        return received, False


def post(target: bytes, body: bytes, bearer: bool = True) -> bytes:
    headers = b"Host: gw.example\r\nContent-Type: application/json\r\nConnection: close\r\n"
    if bearer:
        headers += b"Authorization: " + AUTH["Authorization"].encode() + b"\r\n"
    return b"POST " + target + b" HTTP/1.1\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body) + body


def body_of(response: bytes) -> bytes:
    """The body of the one (chunked or not) response to a GET or POST in ``response``."""
    parsed, _ = parse_responses(response, [b"POST"])
    assert len(parsed) == 1, response
    return parsed[0].body


def test_non_ascii_query_is_answered_and_closed(gateway: GatewayProcess) -> None:
    """GET /healthz?%C3%A9=1 HTTP/1.0 gets its 200 and the server closes the connection (it used to hang)."""
    response, closed = exchange(gateway.port, b"GET /healthz?%C3%A9=1 HTTP/1.0\r\n\r\n")
    assert response.startswith(b"HTTP/1.0 200 OK\r\n")
    assert body_of(response) == b"OK"
    assert closed
    # Probes stay out of the access log by default (--log-probes logs them;
    # the escaped, redacted line is asserted in tests/test_site.py).
    assert "GET /healthz" not in gateway.log


def test_text_that_is_not_utf8_is_a_json_400(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """A path or ?commit= that is not UTF-8, and a "\\udc80" in the body, are JSON 400s and build nothing."""
    before = builds(kube)
    surrogate = BODY.replace(b'"repo_name": "acme/webapp"', b'"repo_name": "acme/\\udc80"')
    assert surrogate != BODY
    cases = [
        (post(b"/events/webhook/%ff", BODY), {"status": "Bad Request", "reason": "the path is not valid UTF-8"}),
        (
            post(b"/events/webhook/solo?commit=%ff", BODY),
            {"status": "Bad Request", "reason": "the query is not valid UTF-8"},
        ),
        (
            post(b"/events/webhook/solo", surrogate),
            {"status": "Malformed body", "reason": "body has text that is not valid Unicode"},
        ),
    ]
    for data, answer in cases:
        response, _ = exchange(gateway.port, data)
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n"), response
        assert json.loads(body_of(response)) == answer
    assert new_builds(kube, before) == []
    assert "Traceback" not in gateway.log


def test_absolute_form_target_builds(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """POST http://host/events/webhook/solo?token=... is served like its origin form."""
    before = builds(kube)
    body = BODY.replace(b"1767225600", b"1767225601")
    response, _ = exchange(
        gateway.port, post(b"http://gw.example/events/webhook/solo?token=" + SECRET.encode(), body, bearer=False)
    )
    assert response.startswith(b"HTTP/1.1 200 OK\r\n"), response
    assert json.loads(body_of(response))["event_provider"] == "dockerhub"
    assert len(new_builds(kube, before)) == 1


def test_header_section_over_the_limit_is_431(gateway: GatewayProcess) -> None:
    """A header line over 16 KiB gets a JSON 431 and the connection closes."""
    response, closed = exchange(
        gateway.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert json.loads(body_of(response)) == {"status": "Request Header Fields Too Large"}
    assert closed


def test_no_target_form_logs_the_token(gateway: GatewayProcess) -> None:
    """A fragment before ?token=, a percent-encoded name, ;-separated items: the token never reaches the log."""
    targets = [
        b"/events/webhook/acme/webapp/c#?token=" + SECRET.encode(),
        b"/events/webhook/solo?%74oken=" + SECRET.encode(),
        b"/events/webhook/solo?a=1;token=" + SECRET.encode(),
        b"/events/webhook/solo?token=x&token=" + SECRET.encode(),
    ]
    for target in targets:
        response, _ = exchange(gateway.port, post(target, BODY, bearer=False))
        assert response.startswith(b"HTTP/1.1 200 OK\r\n"), (target, response)
    gateway.request("GET", "/healthz")
    assert "%74oken=REDACTED" in gateway.log
    assert SECRET not in gateway.log
