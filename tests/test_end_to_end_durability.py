"""
End to end, durability (promises P1, P2 and P6 of docs/guarantees.md): a real gateway with ``--spool`` against the
fake Kubernetes API process, through outages, ``kill -9``, faults after
commit, error storms and SIGTERM under load. Every count is exact: each
acknowledged delivery is built exactly once, with its payload.
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.backend_contract import project_secret
from tests.e2e import NAMESPACE, PAYLOADS, SECRET
from tests.gatewayprocess import GatewayProcess, Response
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {SECRET}"}
# Tests drain hundreds of builds: lift the client-side rate limit (measured by the benchmark, not here).
FAST = ["--kube-qps", "1000", "--kube-burst", "1000"]
DRAIN_TIMEOUT = 60.0


def acr_event(n: int) -> bytes:
    """A distinct ACR push (its own event id and tag)."""
    document = json.loads((PAYLOADS / "acr_push.json").read_bytes())
    document["id"] = f"00000000-0000-4000-8000-{n:012d}"
    document["target"]["tag"] = f"v{n}"
    return json.dumps(document).encode()


@pytest.fixture
def api(tmp_path: Path) -> Any:
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps([project_secret("solo", crGatewaySecret=SECRET.encode())]))
    process = FakeKubeProcess.start(str(tmp_path / "api"), namespaces=(NAMESPACE,), seeds=[str(seed)])
    try:
        yield process
    finally:
        process.stop()


def start(api: FakeKubeProcess, workdir: Path, *extra: str) -> GatewayProcess:
    return GatewayProcess.start(
        ["--kubeconfig", api.kubeconfig, "--namespace", NAMESPACE, "--spool", str(workdir / "spool"), *FAST, *extra],
        workdir,
    )


def payloads_by_build(api: FakeKubeProcess) -> dict[str, bytes]:
    return {
        secret["metadata"]["name"]: base64.b64decode(secret["data"]["payload"])
        for secret in api.secrets(NAMESPACE)
        if secret.get("type") == "brigade.sh/build"
    }


def wait_for(condition: Callable[[], bool], timeout: float = DRAIN_TIMEOUT) -> None:
    """Poll ``condition`` every 0.2 s, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    assert condition(), "timed out"


def test_outage_kill9_restart(api: FakeKubeProcess, tmp_path: Path) -> None:
    """
    API down while 200 webhooks arrive (all 202), then kill -9, restart on the
    same spool, API back: exactly 200 builds, each payload once.
    """
    gateway = start(api, tmp_path)
    try:
        # The project becomes known (and saved) while the API is up.
        assert gateway.post("/events/webhook/solo", acr_event(0), AUTH).status == 200
        api.set_listening(False)
        answers = [gateway.post("/events/webhook/solo", acr_event(n), AUTH) for n in range(1, 201)]
        assert [answer.status for answer in answers] == [202] * 200
        assert all(answer.json["queued"] for answer in answers)
        assert gateway.request("GET", "/readyz").body == b"OK"
    finally:
        gateway.kill()
    restarted = start(api, tmp_path)
    try:
        api.set_listening(True)
        expected = {answer.json["build_id"] for answer in answers}
        wait_for(lambda: expected <= set(payloads_by_build(api)))
        built = payloads_by_build(api)
        assert len(built) == 201
        for n, answer in enumerate(answers, start=1):
            assert built[answer.json["build_id"]] == acr_event(n)
    finally:
        assert restarted.stop() == 0


def test_restart_during_outage_still_authenticates(api: FakeKubeProcess, tmp_path: Path) -> None:
    """A restart while the API is down still knows the project (saved beside the spool) and queues."""
    gateway = start(api, tmp_path)
    assert gateway.post("/events/webhook/solo", acr_event(1), AUTH).status == 200
    gateway.kill()
    api.set_listening(False)
    restarted = start(api, tmp_path)
    try:
        answer = restarted.post("/events/webhook/solo", acr_event(2), AUTH)
        assert answer.status == 202
        refused = restarted.post("/events/webhook/solo?token=wrong", acr_event(3))
        assert refused.status == 403
        api.set_listening(True)
        wait_for(lambda: answer.json["build_id"] in payloads_by_build(api))
        assert len(payloads_by_build(api)) == 2
    finally:
        restarted.stop()


@pytest.mark.parametrize("code", [500, 504])
@pytest.mark.parametrize("spool", [True, False])
def test_error_after_commit_no_duplicate(api: FakeKubeProcess, tmp_path: Path, spool: bool, code: int) -> None:
    """
    A create stored but answered 500 or 504 is retried into a 409 for the same
    build: one build, and the gateway knows it exists.
    """
    if spool:
        gateway = start(api, tmp_path)
    else:
        gateway = GatewayProcess.start(
            ["--kubeconfig", api.kubeconfig, "--namespace", NAMESPACE, "--no-spool", *FAST], tmp_path
        )
    try:
        assert gateway.post("/events/webhook/solo", acr_event(1), AUTH).status == 200
        api.add_fault("fail_after_commit", code=code, times=1, verbs=["create"])
        answer = gateway.post("/events/webhook/solo", acr_event(7), AUTH)
        if spool:
            # The spool stops waiting at the first failure: queued, then resolved by the retry.
            assert (answer.status, answer.json["queued"]) == (202, True)
        else:
            assert (answer.status, answer.json["duplicate"]) == (200, True)
        # The failed create and the retry that met the 409, after the first delivery's create.
        wait_for(lambda: api.count(verb="create") == 3)
        built = payloads_by_build(api)
        assert len(built) == 2
        assert built[answer.json["build_id"]] == acr_event(7)
    finally:
        gateway.stop()


def test_503_storm_loses_nothing(api: FakeKubeProcess, tmp_path: Path) -> None:
    """During a storm of 503s (half the API's answers) all 60 deliveries are acknowledged, and built once after it."""
    gateway = start(api, tmp_path)
    try:
        # The project is known before the storm: an unknown one cannot be checked during it.
        assert gateway.post("/events/webhook/solo", acr_event(1000), AUTH).status == 200
        api.add_fault("error_storm", code=503, retry_after=0, probability=0.5, seed=7)
        answers = [gateway.post("/events/webhook/solo", acr_event(n), AUTH) for n in range(60)]
        assert {answer.status for answer in answers} <= {200, 202}
        expected = {answer.json["build_id"]: acr_event(n) for n, answer in enumerate(answers)}
        storm = api.faults()[0]
        assert storm["fired"] > 0
        # The storm passes; the spool's backoff (capped at 30 s) brings the rest in.
        api.clear_faults()
        wait_for(lambda: set(expected) <= set(payloads_by_build(api)))
        built = payloads_by_build(api)
        del built[next(name for name, body in built.items() if body == acr_event(1000))]
        assert built == expected
    finally:
        gateway.stop()


def test_429_with_retry_after_is_honoured(api: FakeKubeProcess, tmp_path: Path) -> None:
    """The API's rate limiter (plain-text 429 with Retry-After) delays, never loses, a build."""
    api.add_fault("too_many_requests", retry_after=1, style="limiter", times=2, verbs=["create"])
    gateway = start(api, tmp_path)
    try:
        answer = gateway.post("/events/webhook/solo", acr_event(3), AUTH)
        assert answer.status in (200, 202)
        wait_for(lambda: answer.json["build_id"] in payloads_by_build(api))
        assert api.count(verb="create") == 3
    finally:
        gateway.stop()


def test_sigterm_under_load(api: FakeKubeProcess, tmp_path: Path) -> None:
    """
    SIGTERM while deliveries stream in (the API slow): the gateway exits 0
    (waited for at most 30 s); every delivery it acknowledged is built exactly once after a restart.
    """
    api.add_fault("latency", seconds=0.3, verbs=["create"])
    gateway = start(api, tmp_path)
    acknowledged: dict[str, bytes] = {}
    refused = 0
    stop = threading.Event()

    def send() -> None:
        nonlocal refused
        for n in range(300):
            if stop.is_set():
                return
            body = acr_event(1000 + n)
            try:
                answer: Response = gateway.post("/events/webhook/solo", body, AUTH)
            except OSError:
                refused += 1
                continue
            if answer.status in (200, 202):
                acknowledged[answer.json["build_id"]] = body
            else:
                assert answer.status == 503, answer.body
                refused += 1

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: len(acknowledged) >= 20, timeout=30)
        gateway.process.send_signal(signal.SIGTERM)
        try:
            code = gateway.process.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"no exit within 30 s of SIGTERM:\n{gateway.log}") from None
        assert code == 0
        assert "Shutting down" in gateway.log
    finally:
        stop.set()
        sender.join(30)
    api.clear_faults()
    restarted = start(api, tmp_path)
    try:
        wait_for(lambda: set(acknowledged) <= set(payloads_by_build(api)))
        built = payloads_by_build(api)
        assert {name: built[name] for name in acknowledged} == acknowledged
        assert len(built) == len(acknowledged)
    finally:
        restarted.stop()


def test_full_spool_is_503_and_not_ready(api: FakeKubeProcess, tmp_path: Path) -> None:
    """With the API down and the spool at its cap, deliveries get 503 with Retry-After and /readyz fails."""
    gateway = start(api, tmp_path, "--spool-max-records", "3")
    try:
        assert gateway.post("/events/webhook/solo", acr_event(0), AUTH).status == 200
        api.set_listening(False)
        statuses = [gateway.post("/events/webhook/solo", acr_event(n), AUTH).status for n in range(1, 4)]
        assert statuses == [202, 202, 202]
        refused = gateway.post("/events/webhook/solo", acr_event(4), AUTH)
        assert refused.status == 503
        assert int(refused.headers["retry-after"]) > 0
        ready = gateway.request("GET", "/readyz")
        assert (ready.status, ready.body) == (503, b"not ready: the spool cannot accept deliveries")
        assert gateway.request("GET", "/healthz").body == b"OK"
        api.set_listening(True)
        wait_for(lambda: len(payloads_by_build(api)) == 4)
        wait_for(lambda: gateway.request("GET", "/readyz").status == 200)
    finally:
        gateway.stop()
