"""
End to end, every registry: each sample delivery (with its sender's headers)
to a real gateway process makes exactly the expected build, or none with a
2xx, in the fake Kubernetes API.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from tests.e2e import PAYLOADS, SECRET, builds, data, new_builds
from tests.gatewayprocess import GatewayProcess
from tests.kubetarget import FakeKubeProcess

# Every test here runs a real gateway and/or fake Kubernetes API process.
pytestmark = pytest.mark.slow

# sample -> (event type, short title) of its build, or (None, reason it is ignored)
EXPECTED: dict[str, tuple[str | None, str]] = {
    "acr_chart_delete": ("chart_delete", "chart_delete helm/charts:webapp-0.3.1.tgz"),
    "acr_chart_push": ("chart_push", "chart_push helm/charts:webapp-0.3.1.tgz"),
    "acr_delete": ("image_delete", "image_delete acmeregistry.azurecr.io/team/webapp"),
    "acr_ping": (None, "ping"),
    "acr_push": ("image_push", "image_push acmeregistry.azurecr.io/team/webapp:v1.4.2"),
    "acr_quarantine": ("image_quarantine", "image_quarantine acmeregistry.azurecr.io/team/webapp:v1.4.3"),
    "aliyun_no_full_name": (None, "untagged"),
    "aliyun_push": ("image_push", "image_push registry.cn-hangzhou.aliyuncs.com/acme/webapp:v1.4.2"),
    "distribution_deletes": ("image_delete", "image_delete registry.example.com/acme/webapp (+1 more)"),
    "distribution_push": ("image_push", "image_push registry.example.com/acme/webapp:v1.4.2"),
    "distribution_v1_mixed": ("image_push", "image_push registry.example.com:5000/acme/webapp:v1.4.3"),
    "distribution_v2_artifacts": ("image_push", "image_push registry.example.com/acme/policies:v3 (+1 more)"),
    "dockerhub_push": ("image_push", "image_push docker.io/acme/webapp:v1.4.2"),
    "ecr_delete": ("image_delete", "image_delete 111122223333.dkr.ecr.eu-west-1.amazonaws.com/acme/webapp:v1.4.1"),
    "ecr_failure": (None, "failure"),
    "ecr_push": ("image_push", "image_push 111122223333.dkr.ecr.eu-west-1.amazonaws.com/acme/webapp:v1.4.2"),
    "ecr_scan": (None, "unsupported event"),
    "ecr_untagged": (None, "untagged"),
    "gar_delete": ("image_delete", "image_delete europe-west1-docker.pkg.dev/acme-prod/apps/webapp:v1.4.1"),
    "gar_gcr_insert": ("image_push", "image_push gcr.io/acme-prod/webapp:latest"),
    "gar_insert": ("image_push", "image_push europe-west1-docker.pkg.dev/acme-prod/apps/webapp:v1.4.2"),
    "gar_insert_untagged": (None, "untagged"),
    "github_chart": ("chart_push", "chart_push ghcr.io/acme/charts/webapp:0.3.1"),
    "github_npm": (None, "not a container"),
    "github_package": ("image_push", "image_push ghcr.io/acme/webapp:v1.4.2"),
    "github_ping": (None, "ping"),
    "github_registry_package": ("image_push", "image_push ghcr.io/acme/webapp:v1.4.3"),
    "github_untagged": (None, "untagged"),
    "harbor_cloudevents_digest_only": (None, "untagged"),
    "harbor_cloudevents_push": ("image_push", "image_push harbor.example.com/acme/webapp:v1.4.3"),
    "harbor_cloudevents_quota": (None, "quota"),
    "harbor_delete": ("image_delete", "image_delete harbor.example.com/acme/webapp:v1.4.1"),
    "harbor_legacy_push_image": ("image_push", "image_push harbor.example.com:8443/library/busybox:latest"),
    "harbor_multi_resource": ("image_push", "image_push harbor.example.com/acme/webapp:v1.5.0"),
    "harbor_pull": (None, "pull"),
    "harbor_push": ("image_push", "image_push harbor.example.com/acme/webapp:v1.4.2"),
    "harbor_scanning_completed": (None, "scan"),
    "jfrog_artifact_deployed": (None, "unsupported event"),
    "jfrog_deleted": ("image_delete", "image_delete acme.jfrog.example/docker-local/acme/webapp:v1.4.1"),
    "jfrog_oci_manifest": ("image_push", "image_push acme.jfrog.example:8443/oci-local/charts/webapp:0.3.1"),
    "jfrog_promoted": (None, "unsupported event"),
    "jfrog_push": ("image_push", "image_push acme.jfrog.example/docker-local/acme/webapp:v1.4.2"),
    "nexus_asset": (None, "unsupported event"),
    "nexus_created": ("image_push", "image_push acme/webapp:v1.4.2"),
    "nexus_deleted": ("image_delete", "image_delete acme/webapp:v1.4.1"),
    "nexus_maven": (None, "not docker"),
    "quay_build_success": (None, "unsupported event"),
    "quay_legacy_push": ("image_push", "image_push quay.io/acme/webapp:v1.4.2 (+1 more)"),
    "quay_push": ("image_push", "image_push quay.example.com/acme/webapp:v1.4.2"),
    "quay_test": (None, "test"),
}


def test_every_sample_is_covered() -> None:
    """The table names every sample in tests/payloads, so none goes untested end to end."""
    samples = {path.stem for path in PAYLOADS.glob("*.json") if not path.name.endswith(".headers.json")}
    assert samples == set(EXPECTED)


def _headers(sample: str, body: bytes) -> dict[str, str]:
    sidecar = PAYLOADS / f"{sample}.headers.json"
    headers: dict[str, str] = json.loads(sidecar.read_text()) if sidecar.exists() else {}
    if "x-github-event" in headers:
        # GitHub signs; prove the secret the way it does.
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    elif sample.startswith(("dockerhub", "quay", "aliyun")):
        pass  # these senders cannot set headers: the token goes in the URL
    else:
        headers["Authorization"] = f"Bearer {SECRET}"
    return headers


@pytest.mark.parametrize("sample", sorted(EXPECTED))
def test_sample_end_to_end(gateway: GatewayProcess, kube: FakeKubeProcess, sample: str) -> None:
    """The sample makes its one build (type, provider, titles, payload byte for byte) or none, with 200."""
    body = (PAYLOADS / f"{sample}.json").read_bytes()
    kind, detail = EXPECTED[sample]
    provider = sample.split("_")[0]
    query = f"?token={SECRET}" if sample.startswith(("dockerhub", "quay", "aliyun")) else ""
    before = builds(kube)
    answer = gateway.post(f"/events/webhook/solo{query}", body, _headers(sample, body))
    assert answer.status == 200, answer.body
    assert answer.json["event_provider"] == provider
    if kind is None:
        assert answer.json["ignored"] == detail
        assert new_builds(kube, before) == []
        return
    assert answer.json["event_type"] == kind
    [secret] = new_builds(kube, before)
    assert secret["metadata"]["name"] == answer.json["build_id"]
    fields = data(secret)
    assert fields["event_type"] == kind.encode()
    assert fields["event_provider"] == provider.encode()
    assert fields["short_title"] == detail.encode()
    assert fields["payload"] == body
    assert base64.b64decode(secret["data"]["payload"]) == body
