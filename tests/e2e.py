"""
Shared pieces of the end-to-end tests: a fake Kubernetes API process over
TLS, seeded with projects, and a real gateway process pointed at it (one pair
per test module), plus helpers that read the builds back with the official
client.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.backend_contract import project_secret
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess
from tests.slow import starts_process

PAYLOADS = Path(__file__).parent / "payloads"
NAMESPACE = "brigade"
SECRET = "e2e-crgateway-secret-8f14e45f"
AUTH = {"Authorization": f"Bearer {SECRET}"}
# Project data a gateway must never log.
SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY----- e2e-never-log-this"


@pytest.fixture(scope="module")
@starts_process
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeKubeProcess]:
    """The fake API over TLS, namespace brigade, seeded with two projects and a non-project."""
    directory = tmp_path_factory.mktemp("e2e-kube")
    seeds = [
        project_secret("acme/webapp", repository=b"github.com/acme/webapp", crGatewaySecret=SECRET.encode()),
        project_secret("solo", crGatewaySecret=SECRET.encode(), sshKey=SSH_KEY.encode()),
        project_secret("impostor", secret_type="brigade.sh/build", crGatewaySecret=SECRET.encode()),
        project_secret("keyless", sshKey=SSH_KEY.encode()),
    ]
    seed_file = directory / "seed.json"
    seed_file.write_text(json.dumps(seeds))
    process = FakeKubeProcess.start(str(directory / "api"), namespaces=(NAMESPACE,), seeds=[str(seed_file)])
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
@starts_process
def gateway(
    kube: FakeKubeProcess, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[GatewayProcess]:
    """
    A gateway configured by the fake's kubeconfig (CA file and bearer token),
    with the test module's ``GATEWAY_ARGS`` appended to its command line.
    """
    process = GatewayProcess.start(
        ["--kubeconfig", kube.kubeconfig, "--namespace", NAMESPACE, *getattr(request.module, "GATEWAY_ARGS", [])],
        tmp_path_factory.mktemp("e2e-gateway"),
    )
    try:
        yield process
    finally:
        process.stop()


def builds(kube: FakeKubeProcess) -> dict[str, dict[str, Any]]:
    """Every build Secret in the fake, by name, read with the official client."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=kube.kubeconfig)
    try:
        listed = client.CoreV1Api(api).list_namespaced_secret(
            NAMESPACE, field_selector="type=brigade.sh/build", _request_timeout=10
        )
        return {item["metadata"]["name"]: item for item in api.sanitize_for_serialization(listed)["items"]}
    finally:
        api.close()


def new_builds(kube: FakeKubeProcess, before: dict[str, Any]) -> list[dict[str, Any]]:
    return [secret for name, secret in builds(kube).items() if name not in before]


def data(secret: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}
