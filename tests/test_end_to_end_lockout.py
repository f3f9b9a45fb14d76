"""
End to end, no lockout: behind a trusted proxy (here 127.0.0.1, as an
ingress would be) a stranger's failed authentications refuse only that
stranger on that project, never another sender nor another project; a
client cannot escape its own limit by prepending to ``X-Forwarded-For``.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest

from tests.e2e import PAYLOADS, SECRET, builds
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

GATEWAY_ARGS = ["--trusted-proxy", "127.0.0.0/8", "--auth-failure-burst", "3", "--auth-failure-rate", "1"]
BODY = (PAYLOADS / "dockerhub_push.json").read_bytes()
STRANGER = "198.51.100.66"


def deliver(gateway: GatewayProcess, project: str, secret: str, forwarded_for: str, n: int) -> int:
    body = json.loads(BODY)
    body["push_data"]["tag"] = f"v{n}"
    answer = gateway.post(
        f"/events/webhook/{project}",
        json.dumps(body).encode(),
        {"Authorization": f"Bearer {secret}", "X-Forwarded-For": forwarded_for},
    )
    return answer.status


def test_a_strangers_failures_refuse_only_the_stranger_on_that_project(
    gateway: GatewayProcess, kube: FakeKubeProcess
) -> None:
    """Three wrong secrets from one forwarded client: it gets 429 on that project; the real sender
    behind the same proxy, and the stranger on another project, are served; prepending changes nothing."""
    before = len(builds(kube))
    assert [deliver(gateway, "solo", "wrong-secret-0123456789", STRANGER, n) for n in range(3)] == [403, 403, 403]
    assert deliver(gateway, "solo", SECRET, STRANGER, 10) == 429
    # The stranger prepends another address: the proxy's entry (the right-most) still names it.
    assert deliver(gateway, "solo", SECRET, f"203.0.113.9, {STRANGER}", 11) == 429
    # The legitimate sender behind the same proxy.
    assert deliver(gateway, "solo", SECRET, "192.0.2.10", 12) == 200
    # The stranger's limit is per project.
    assert deliver(gateway, "acme/webapp", SECRET, STRANGER, 13) == 200
    assert len(builds(kube)) == before + 2
    assert "Refused a delivery for 'brigade-" in gateway.log
    assert f"from {STRANGER}: too many failed authentications" in gateway.log


def test_haproxy_endpoint_gives_the_client_address(tmp_path: Path) -> None:
    """With --port haproxy:tcp:..., the address in the PROXY header is the source the gateway holds to."""
    gateway = GatewayProcess.start(
        ["--port", "haproxy:tcp:0:interface=127.0.0.1", "--backend", f"dir:{tmp_path / 'data'}"], tmp_path / "run"
    )
    try:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as connection:
            connection.sendall(
                b"PROXY TCP4 198.51.100.77 127.0.0.1 5555 80\r\n"
                b"POST /events/webhook/nobody HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}"
            )
            answer = b""
            while chunk := connection.recv(4096):
                answer += chunk
        assert answer.startswith(b"HTTP/1.0 403 Forbidden\r\n")
        deadline = time.monotonic() + 10
        while "from 198.51.100.77: no such project" not in gateway.log and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "from 198.51.100.77: no such project" in gateway.log
    finally:
        gateway.stop()
