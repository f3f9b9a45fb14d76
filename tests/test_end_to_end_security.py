"""
End to end, hostile: the authentication matrix, hostile bodies, the body cap,
slow clients, the connection cap, rate limits and log secrecy, on a real
``twistd -n brigade-cr`` process against the fake Kubernetes API over TLS.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import time
from pathlib import Path

import pytest

from tests.e2e import AUTH, NAMESPACE, PAYLOADS, SECRET, SSH_KEY, builds, new_builds
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

# The matrix below fails authentication many times from 127.0.0.1; the
# per-source limit is tested on a gateway of its own.
GATEWAY_ARGS = ["--auth-failure-burst", "100000", "--max-body", "64K", "--request-timeout", "2"]
WRONG = "wrong-secret-0123456789"
BODY = (PAYLOADS / "dockerhub_push.json").read_bytes()


def _signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _basic(secret: str) -> str:
    return "Basic " + base64.b64encode(f"registry:{secret}".encode()).decode()


# mechanism -> how a delivery presents a secret (None: presents nothing)
MECHANISMS = {
    "url-token": lambda secret, body: ({}, f"?token={secret}"),
    "bearer": lambda secret, body: ({"Authorization": f"Bearer {secret}"}, ""),
    "basic": lambda secret, body: ({"Authorization": _basic(secret)}, ""),
    "hmac-sha256": lambda secret, body: ({"X-Hub-Signature-256": _signature(secret, body)}, ""),
}


@pytest.mark.parametrize("mechanism", sorted(MECHANISMS))
@pytest.mark.parametrize("secret", ["right", "wrong", "missing"])
@pytest.mark.parametrize("project", ["solo", "nobody"])
def test_auth_matrix(gateway: GatewayProcess, kube: FakeKubeProcess, mechanism: str, secret: str, project: str) -> None:
    """Only the right secret for a known project builds; every other cell gets the same 403."""
    value = {"right": SECRET, "wrong": WRONG}.get(secret)
    # A distinct push per mechanism: the same event twice would be one build.
    body = BODY.replace(b"1767225600", str(1767225600 + sorted(MECHANISMS).index(mechanism)).encode())
    headers, query = MECHANISMS[mechanism](value, body) if value is not None else ({}, "")
    before = builds(kube)
    answer = gateway.post(f"/events/webhook/{project}{query}", body, headers)
    if secret == "right" and project == "solo":
        assert answer.status == 200, answer.body
        assert answer.json["event_provider"] == "dockerhub"
        assert len(new_builds(kube, before)) == 1
    else:
        assert (answer.status, answer.body) == (403, b'{"status": "Forbidden"}\n')
        assert new_builds(kube, before) == []


HOSTILE = [
    b"[" * 60000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b'{"a": "\xed\xa0\x80"}',
    b'{"a": "\xc0\xaf"}',
    b'{"a": 1, "a": 2}',
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": 1e999999}',
    b'{"a": ' + b"1" * 20000 + b"}",
    b"null",
    b"[]",
    b'"string"',
    b"\x00\x01\x02",
    b"",
    b"\xef\xbb\xbf{}",
]


@pytest.mark.parametrize("body", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_bodies_are_400(gateway: GatewayProcess, kube: FakeKubeProcess, body: bytes) -> None:
    """Each hostile body gets a 400, creates nothing, and the next request is served normally."""
    before = builds(kube)
    answer = gateway.post("/events/webhook/solo", body, AUTH)
    assert answer.status == 400, answer.body
    assert answer.json["status"] == "Malformed body"
    assert new_builds(kube, before) == []
    assert gateway.request("GET", "/healthz").body == b"OK"


def _exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, then read until the server closes (bounded by ``timeout``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = connection.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_content_length_over_cap_is_413(gateway: GatewayProcess) -> None:
    """A Content-Length over --max-body is answered 413 without sending the body."""
    head = (
        b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\n\r\n"
    )
    answer = _exchange(gateway.port, head)
    assert answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")


def test_chunked_over_cap_is_413(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """A chunked body is cut off with 413 once it passes --max-body."""
    before = builds(kube)
    chunk = b"a" * 16384
    request = (
        b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Authorization: Bearer " + SECRET.encode() + b"\r\n\r\n"
    )
    request += (b"4000\r\n" + chunk + b"\r\n") * 5 + b"0\r\n\r\n"
    answer = _exchange(gateway.port, request)
    assert answer.startswith(b"HTTP/1.1 413 Payload Too Large\r\n")
    assert new_builds(kube, before) == []


def test_body_just_under_cap_is_accepted(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """A body of exactly --max-body bytes is accepted."""
    padding = 65536 - len(b'{"pad": ""}')
    body = b'{"pad": "' + b"x" * padding + b'"}'
    assert len(body) == 65536
    before = builds(kube)
    assert gateway.post("/events/webhook/solo", body, AUTH).status == 200
    assert len(new_builds(kube, before)) == 1


def test_trickling_client_cut_off(gateway: GatewayProcess) -> None:
    """A client sending a byte every quarter second is answered 408 and cut off at the 2 s deadline."""
    request = b"POST /events/webhook/solo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
    sent = 0
    received = b""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
        connection.settimeout(0.25)
        for byte in request:
            try:
                connection.sendall(bytes([byte]))
            except OSError:
                break
            sent += 1
            try:
                chunk = connection.recv(4096)
            except TimeoutError:
                continue
            received += chunk
            if not chunk or b"408" in received:
                break
    assert received.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    # Two seconds at four bytes a second: the request (62 bytes) never completed.
    assert sent < len(request)


def test_hmac_is_over_raw_bytes(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """A signature over the exact bytes verifies; the same JSON re-serialised does not."""
    body = b'{ "anything" :  [1,2,3] }'
    before = builds(kube)
    good = gateway.post("/events/webhook/solo", body, {"X-Hub-Signature-256": _signature(SECRET, body)})
    bad = gateway.post(
        "/events/webhook/solo", body, {"X-Hub-Signature-256": _signature(SECRET, b'{"anything": [1, 2, 3]}')}
    )
    assert (good.status, bad.status) == (200, 403)
    assert len(new_builds(kube, before)) == 1


def _healthz_answers(port: int) -> bool:
    """Whether a new connection gets GET /healthz answered (False if it is closed on us)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            return connection.recv(4096).startswith(b"HTTP/1.1 200 OK")
    except OSError:
        return False


def test_connection_cap(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """Beyond --max-connections a new connection is closed at once; freeing one makes room."""
    process = GatewayProcess.start(
        ["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE, "--max-connections", "3"], tmp_path
    )
    held = []
    try:
        for _ in range(3):
            connection = socket.create_connection(("127.0.0.1", process.port), timeout=10)
            held.append(connection)
            # Known to the server once it has answered on it.
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert connection.recv(4096).startswith(b"HTTP/1.1 200 OK")
        assert not _healthz_answers(process.port)
        held.pop().close()
        # The server notices the close at its next read: poll, bounded.
        for _ in range(50):
            if _healthz_answers(process.port):
                break
            time.sleep(0.1)
        assert _healthz_answers(process.port)
    finally:
        for connection in held:
            connection.close()
        process.stop()


def test_failed_authentications_rate_limited(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """After a burst of failed authentications, the source gets 429 with Retry-After, even with the right secret."""
    process = GatewayProcess.start(
        ["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE, "--auth-failure-burst", "3"], tmp_path
    )
    try:
        for _ in range(3):
            assert process.post("/events/webhook/solo?token=guess", BODY).status == 403
        answer = process.post("/events/webhook/solo", BODY, AUTH)
        assert answer.status == 429
        assert answer.json == {"status": "Too Many Requests"}
        assert int(answer.headers["retry-after"]) == 6
    finally:
        process.stop()


def test_no_secret_in_any_log_line(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """
    A whole session of good and bad deliveries, by every mechanism, leaves no
    secret in any log line: not the project secret, not a wrong guess, not a
    signature, not project data, not the Kubernetes token.
    """
    process = GatewayProcess.start(["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE], tmp_path)
    try:
        for secret in (SECRET, WRONG):
            for mechanism in sorted(MECHANISMS):
                headers, query = MECHANISMS[mechanism](secret, BODY)
                for project in ("solo", "keyless", "nobody"):
                    process.post(f"/events/webhook/{project}{query}", BODY, headers)
        process.post("/events/webhook/solo?token=" + SECRET, b"not json")
        process.post("/events/webhook/solo", b"\xff", AUTH)
    finally:
        process.stop()
    log = process.log
    assert "Refused a delivery" in log and ", build brigade-worker-" in log
    forbidden = [
        SECRET,
        WRONG,
        base64.b64encode(f"registry:{SECRET}".encode()).decode(),
        _signature(SECRET, BODY).removeprefix("sha256="),
        _signature(WRONG, BODY).removeprefix("sha256="),
        SSH_KEY,
        base64.b64encode(SSH_KEY.encode()).decode(),
        kube.token,
        "registry.hub.docker.com/u/acme/webapp/hook",
    ]
    for line in log.splitlines():
        for secret in forbidden:
            assert secret not in line, f"a secret reached the log: {line}"
