"""
End to end: a real ``twistd -n brigade-cr`` process against the fake
Kubernetes API, served over TLS with a bearer token, both on loopback.
"""

from __future__ import annotations

import base64
import http.client
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from twisted.copyright import version as twisted_version

from brigade_cr import __version__
from brigade_cr.core.contract import BUILD_DATA_KEYS, is_ulid, project_id
from tests.backend_contract import project_secret
from tests.e2e import AUTH, NAMESPACE, PAYLOADS, SECRET, builds, data, new_builds
from tests.gatewayprocess import GatewayProcess
from tests.helpers import promtool
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow


def test_healthz(gateway: GatewayProcess) -> None:
    """GET /healthz answers OK."""
    answer = gateway.request("GET", "/healthz")
    assert (answer.status, answer.body) == (200, b"OK")


@pytest.mark.parametrize(
    ("path", "name", "commit"),
    [
        ("/events/webhook/solo", "solo", "master"),
        ("/events/webhook/solo?commit=c0ffee", "solo", "c0ffee"),
        ("/events/webhook/acme/webapp", "acme/webapp", "master"),
        ("/events/webhook/acme/webapp/v9", "acme/webapp", "v9"),
        ("/events/webhook/acme/webapp/v9?commit=override", "acme/webapp", "override"),
        ("/events/webhook/acme%2Fwebapp", "acme/webapp", "master"),
        ("/events/webhook/" + project_id("acme/webapp"), "acme/webapp", "master"),
    ],
)
def test_dockerhub_push_creates_exact_build(
    gateway: GatewayProcess, kube: FakeKubeProcess, path: str, name: str, commit: str
) -> None:
    """Every route form creates one build Secret matching the contract, payload byte for byte."""
    # A distinct push per case (pushed_at), or the cases would be one event.
    unique = str(1767225600 + len(path) * 1000 + len(commit)).encode()
    body = b'{"x": "\xc3\xa9", ' + (PAYLOADS / "dockerhub_push.json").read_bytes().lstrip()[1:].replace(
        b"1767225600", unique
    )
    before = builds(kube)
    answer = gateway.post(path, body, AUTH)
    assert answer.status == 200, answer.body
    [secret] = new_builds(kube, before)
    name_ = secret["metadata"]["name"]
    ulid = name_.removeprefix("brigade-worker-")
    assert is_ulid(ulid)
    pid = project_id(name)
    assert answer.json == {
        "status": "Success",
        "build_id": name_,
        "build": ulid,
        "project_id": pid,
        "event_type": "image_push",
        "event_provider": "dockerhub",
        "commit_ref": commit,
        "duplicate": False,
        "queued": False,
    }
    assert secret["type"] == "brigade.sh/build"
    assert secret["metadata"]["namespace"] == NAMESPACE
    assert secret["metadata"]["labels"] == {
        "heritage": "brigade",
        "component": "build",
        "build": ulid,
        "project": pid,
    }
    # The API server keeps data keys sorted; every key is present.
    assert sorted(secret["data"]) == sorted(BUILD_DATA_KEYS)
    assert data(secret) == {
        "build_id": name_.encode(),
        "build_name": name_.encode(),
        "event_type": b"image_push",
        "event_provider": b"dockerhub",
        "project_id": pid.encode(),
        "commit_id": b"",
        "commit_ref": commit.encode(),
        "clone_url": b"",
        "short_title": b"image_push docker.io/acme/webapp:v1.4.2",
        "long_title": b"dockerhub image_push: docker.io/acme/webapp:v1.4.2 by acme-ci",
        "log_level": b"",
        "payload": body,
        "script": b"",
        "config": b"",
    }


@pytest.mark.parametrize(
    ("sample", "event_type"),
    [
        ("acr_push.json", "image_push"),
        ("acr_delete.json", "image_delete"),
        ("acr_quarantine.json", "image_quarantine"),
        ("acr_chart_push.json", "chart_push"),
        ("acr_chart_delete.json", "chart_delete"),
    ],
)
def test_acr_bodies(gateway: GatewayProcess, kube: FakeKubeProcess, sample: str, event_type: str) -> None:
    """Each ACR action creates one build of its event type, provider acr."""
    body = (PAYLOADS / sample).read_bytes()
    before = builds(kube)
    answer = gateway.post("/events/webhook/solo", body, {"User-Agent": "AzureContainerRegistry/1.0", **AUTH})
    assert answer.status == 200, answer.body
    assert (answer.json["event_type"], answer.json["event_provider"]) == (event_type, "acr")
    [secret] = new_builds(kube, before)
    assert data(secret)["event_type"] == event_type.encode()
    assert data(secret)["event_provider"] == b"acr"
    assert data(secret)["payload"] == body


def test_acr_ping_creates_nothing(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """An ACR ping answers 200 and creates no build."""
    before = builds(kube)
    answer = gateway.post("/events/webhook/solo", (PAYLOADS / "acr_ping.json").read_bytes(), AUTH)
    assert (answer.status, answer.json["ignored"]) == (200, "ping")
    assert new_builds(kube, before) == []


@pytest.mark.parametrize("path", ["/events/webhook/nobody", "/events/webhook/impostor", "/events/webhook/keyless"])
def test_unknown_project(gateway: GatewayProcess, kube: FakeKubeProcess, path: str) -> None:
    """
    An unknown project, a brigade-* Secret that is not a project, or a project
    without a secret answers 403 and creates nothing.
    """
    before = builds(kube)
    answer = gateway.post(path, b"{}", AUTH)
    assert (answer.status, answer.json) == (403, {"status": "Forbidden"})
    assert new_builds(kube, before) == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "body is empty"),
        (b"\xc3\x28", "body is not UTF-8"),
        (b"{not json", "body is not JSON"),
        (b'["a"]', "body is not a JSON object"),
    ],
)
def test_malformed_bodies(gateway: GatewayProcess, kube: FakeKubeProcess, body: bytes, reason: str) -> None:
    """Malformed bodies answer 400 with a reason and create nothing."""
    before = builds(kube)
    answer = gateway.post("/events/webhook/solo", body, AUTH)
    assert (answer.status, answer.json) == (400, {"status": "Malformed body", "reason": reason})
    assert new_builds(kube, before) == []


@pytest.mark.parametrize(("method", "path"), [("GET", "/events/webhook/solo"), ("POST", "/events/webhook/a/b/c/d")])
def test_not_found(gateway: GatewayProcess, method: str, path: str) -> None:
    """Wrong methods and unknown paths answer 404."""
    assert gateway.request(method, path, b"{}").status == 404


def test_token_never_logged(gateway: GatewayProcess) -> None:
    """A query token reaches neither the access log nor any other log line."""
    gateway.post("/events/webhook/solo?token=sup3r-s3cret-t0ken&commit=abc", b"{}")
    gateway.post("/events/webhook/nobody?token=sup3r-s3cret-t0ken", b"{}")
    log = gateway.log
    assert "/events/webhook/solo?token=REDACTED&commit=abc" in log
    assert "sup3r-s3cret-t0ken" not in log


def test_kubernetes_unreachable(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """With the API unreachable, a delivery answers 503 with Retry-After and nothing is created."""
    config = json.loads(json.dumps(_load_yaml(Path(kube.kubeconfig))))
    # A port on loopback where nothing listens: bind one, then close it.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{dead_port}"
    kubeconfig = tmp_path / "dead-kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    before = builds(kube)
    process = GatewayProcess.start(["--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE], tmp_path)
    try:
        answer = process.post("/events/webhook/solo", (PAYLOADS / "dockerhub_push.json").read_bytes(), AUTH)
        assert (answer.status, answer.json) == (503, {"status": "Service Unavailable"})
        assert int(answer.headers["retry-after"]) > 0
    finally:
        process.stop()
    assert new_builds(kube, before) == []


def test_kubernetes_goes_down_midway(tmp_path: Path) -> None:
    """With --no-spool: a build succeeds while the API is up; once it is stopped, the next delivery is a 503."""
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps([project_secret("solo", crGatewaySecret=SECRET.encode())]))
    api = FakeKubeProcess.start(str(tmp_path / "api"), namespaces=(NAMESPACE,), seeds=[str(seed)])
    try:
        process = GatewayProcess.start(
            ["--kubeconfig", api.kubeconfig, "--namespace", NAMESPACE, "--no-spool"], tmp_path / "gw"
        )
        try:
            assert process.post("/events/webhook/solo", b"{}", AUTH).status == 200
            assert len(builds(api)) == 1
            api.stop()
            answer = process.post("/events/webhook/solo", b"{}", AUTH)
            assert answer.status == 503
            assert "retry-after" in answer.headers
        finally:
            process.stop()
    finally:
        api.stop()


def test_wrong_token_is_503(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """An API that refuses the gateway's credentials is a failure (503), never a success."""
    config = _load_yaml(Path(kube.kubeconfig))
    config["users"][0]["user"] = {"token": "not-the-token"}
    kubeconfig = tmp_path / "bad-token-kubeconfig"
    kubeconfig.write_text(json.dumps(config))
    before = builds(kube)
    process = GatewayProcess.start(["--kubeconfig", str(kubeconfig), "--namespace", NAMESPACE], tmp_path)
    try:
        answer = process.post("/events/webhook/solo", b"{}", AUTH)
        assert answer.status == 503
        assert "not-the-token" not in process.log
        assert kube.token not in process.log
    finally:
        process.stop()
    assert new_builds(kube, before) == []


def test_directory_default_then_kubectl_create(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """
    With no cluster configured the gateway says it uses a local directory; the
    build it writes there is accepted by ``kubectl create -f`` as is.
    """
    workdir = tmp_path / "gw"
    projects = workdir / "brigade-cr-data" / "projects"
    projects.mkdir(parents=True)
    (projects / "solo.json").write_text(json.dumps(project_secret("solo", crGatewaySecret=SECRET.encode())))
    process = GatewayProcess.start([], workdir, {"BRIGADE_NAMESPACE": NAMESPACE})
    try:
        assert "no Kubernetes configuration found; using the local directory backend" in process.log
        # Another event than test_acr_bodies' push, which is already in the API.
        body = (PAYLOADS / "acr_push.json").read_bytes().replace(b"0f4c2b8e", b"0f4c2b8f")
        answer = process.post("/events/webhook/solo", body, AUTH)
        assert answer.status == 200, answer.body
    finally:
        process.stop()
    [written] = sorted((workdir / "brigade-cr-data" / "builds").iterdir())
    assert written.name == answer.json["build_id"] + ".json"
    manifest = json.loads(written.read_text())
    assert base64.b64decode(manifest["data"]["payload"]) == body
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; the manifest was checked above")
    before = builds(kube)
    result = subprocess.run(
        [kubectl, "--kubeconfig", kube.kubeconfig, "create", "-n", NAMESPACE, "-f", str(written)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    [created] = new_builds(kube, before)
    assert created["metadata"]["name"] == answer.json["build_id"]
    assert created["data"] == manifest["data"]


def _load_yaml(path: Path) -> dict[str, Any]:
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_redelivery_makes_one_build(gateway: GatewayProcess, kube: FakeKubeProcess) -> None:
    """The same ACR event delivered twice creates one build; the second answer says duplicate."""
    body = (PAYLOADS / "acr_push.json").read_bytes().replace(b"0f4c2b8e", b"deadbeef")
    before = builds(kube)
    first = gateway.post("/events/webhook/solo", body, AUTH)
    second = gateway.post("/events/webhook/solo", body, AUTH)
    assert (first.status, second.status) == (200, 200)
    assert first.json["build_id"] == second.json["build_id"]
    assert (first.json["duplicate"], second.json["duplicate"]) == (False, True)
    [secret] = new_builds(kube, before)
    assert secret["metadata"]["name"] == first.json["build_id"]


def test_metrics_endpoint(tmp_path: Path, kube: FakeKubeProcess) -> None:
    """--metrics serves Prometheus text on its own port, counting deliveries by format and outcome."""
    process = GatewayProcess.start(
        ["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE, "--metrics", "tcp:0:interface=127.0.0.1"],
        tmp_path,
    )
    try:
        body = (PAYLOADS / "acr_push.json").read_bytes().replace(b"0f4c2b8e", b"0f4c2b90")
        assert process.post("/events/webhook/solo", body, AUTH).status == 200
        assert process.post("/events/webhook/solo?token=wrong", body).status == 403
        connection = http.client.HTTPConnection("127.0.0.1", process.metrics_port, timeout=10)
        try:
            connection.request("GET", "/metrics")
            text = connection.getresponse().read().decode()
        finally:
            connection.close()
        assert 'brigade_cr_deliveries_total{format="acr",outcome="built"} 1.0' in text
        assert 'brigade_cr_deliveries_total{format="none",outcome="unauthorized"} 1.0' in text
        # The families of issue 11: the webhook's answers, the API's requests, the builds created.
        assert 'brigade_cr_http_request_duration_seconds_count{code="2xx",route="webhook"} 1.0' in text
        assert 'brigade_cr_http_request_duration_seconds_count{code="4xx",route="webhook"} 1.0' in text
        assert 'brigade_cr_kube_requests_total{code="2xx",verb="create"} 1.0' in text
        assert 'brigade_cr_kube_requests_total{code="2xx",verb="list"}' in text
        assert "brigade_cr_created_builds_total 1.0" in text
        assert f'brigade_cr_build_info{{twisted_version="{twisted_version}",version="{__version__}"}} 1.0' in text
        assert "process_cpu_seconds_total" in text
        checked = subprocess.run(
            [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
        )
        assert (checked.returncode, checked.stdout, checked.stderr) == (0, "", "")
        assert process.request("GET", "/metrics").status == 404
    finally:
        process.stop()
