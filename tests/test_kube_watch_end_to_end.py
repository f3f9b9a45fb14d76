"""
End to end, the project watch: a real gateway process against the fake
Kubernetes API process. Projects added, re-keyed and deleted with the
official client take effect within seconds; a delivery for an unknown
project makes no API call; ``/readyz`` waits for the first sync.
"""

from __future__ import annotations

import base64
import itertools
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from brigade_cr.core.contract import project_id
from tests.backend_contract import project_secret
from tests.e2e import NAMESPACE, PAYLOADS, SECRET
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

# Polling with wrong secrets must not run into the failed-authentication limit.
GATEWAY_ARGS = ["--auth-failure-burst", "10000", "--auth-failure-rate", "10000"]
_events = itertools.count(1)


def acr_event() -> bytes:
    """A distinct ACR push each time."""
    n = next(_events)
    document = json.loads((PAYLOADS / "acr_push.json").read_bytes())
    document["id"] = f"00000000-0000-4000-8000-{n:012d}"
    document["target"]["tag"] = f"v{n}"
    return json.dumps(document).encode()


def post(gateway: GatewayProcess, name: str, secret: str) -> int:
    return gateway.post(f"/events/webhook/{name}", acr_event(), {"Authorization": f"Bearer {secret}"}).status


def eventually(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll ``condition`` every 0.1 s for at most ``seconds``; fail if it never holds."""
    for _ in range(int(seconds / 0.1)):
        if condition():
            return
        time.sleep(0.1)
    assert condition(), "did not happen within the bound"


@pytest.fixture
def core(kube: FakeKubeProcess) -> Iterator[Any]:
    """The official client's CoreV1Api on the fake, as an operator's kubectl would use it."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kube.kubeconfig)
    try:
        yield client.CoreV1Api(api)
    finally:
        api.close()


def test_added_rekeyed_deleted_take_effect(gateway: GatewayProcess, kube: FakeKubeProcess, core: Any) -> None:
    """A project created, re-keyed and deleted in the API is accepted, re-keyed and refused accordingly."""
    first, second = "watch-e2e-first-secret-0001", "watch-e2e-second-secret-002"
    assert post(gateway, "late/comer", first) == 403
    secret = project_secret("late/comer", crGatewaySecret=first.encode())
    core.create_namespaced_secret(NAMESPACE, secret, _request_timeout=10)
    eventually(lambda: post(gateway, "late/comer", first) == 200)
    core.patch_namespaced_secret(
        project_id("late/comer"),
        NAMESPACE,
        {"data": {"crGatewaySecret": base64.b64encode(second.encode()).decode()}},
        _request_timeout=10,
    )
    eventually(lambda: post(gateway, "late/comer", first) == 403)
    assert post(gateway, "late/comer", second) == 200
    core.delete_namespaced_secret(project_id("late/comer"), NAMESPACE, _request_timeout=10)
    eventually(lambda: post(gateway, "late/comer", second) == 403)
    assert "Project " + project_id("late/comer") + " is gone: no longer accepted" in gateway.log


def test_unknown_project_makes_no_api_call(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """Deliveries for unknown projects and wrong secrets are answered from memory: no get, no list."""
    eventually(lambda: gateway.request("GET", "/readyz").status == 200)
    kube.reset_calls()
    answers = [post(gateway, f"no-such-project-{n}", SECRET) for n in range(20)]
    answers += [post(gateway, "solo", "wrong-secret-wrong-secret") for _ in range(20)]
    assert answers == [403] * 40
    calls = kube.calls()
    assert [c for c in calls if c["verb"] != "watch"] == []


def test_not_ready_until_first_sync(kube: FakeKubeProcess, tmp_path: Path) -> None:
    """With the API unreachable at start and nothing persisted, /readyz is 503 until the first list."""
    kube.set_listening(False)
    try:
        gateway = GatewayProcess.start(
            ["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE, *GATEWAY_ARGS], tmp_path / "gw"
        )
    except BaseException:
        kube.set_listening(True)
        raise
    try:
        answer = gateway.request("GET", "/readyz")
        assert (answer.status, answer.body) == (
            503,
            b"not ready: the projects have not been loaded yet (waiting for the first sync)",
        )
        kube.set_listening(True)
        eventually(lambda: gateway.request("GET", "/readyz").status == 200, seconds=40.0)
        assert post(gateway, "solo", SECRET) == 200
    finally:
        kube.set_listening(True)
        gateway.stop()
