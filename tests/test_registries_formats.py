"""
The registry formats of docs/registries.md section 4 beyond Docker Hub and ACR:
recognition (section 2), parsing into ``RegistryEvent`` values (section 6.1),
signature schemes, and robustness against any input.

Samples live in ``tests/payloads/<format>_<case>.json``; a sidecar
``<format>_<case>.headers.json`` holds the headers of deliveries whose headers
matter (lower-case names).
"""

from __future__ import annotations

import base64
import json
import string
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from zope.interface.verify import verifyObject

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.gateway import BUILDABLE, event_type
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import Delivery, RegistryEvent
from brigade_cr.registries import (
    FORMATS,
    ACRFormat,
    AliyunFormat,
    DistributionFormat,
    DockerHubFormat,
    ECRFormat,
    GARFormat,
    GitHubFormat,
    HarborFormat,
    JFrogFormat,
    NexusFormat,
    QuayFormat,
    recognise,
)
from brigade_cr.registries._common import (
    artifact_class,
    is_signature,
    outcome,
    split_reference,
    tag_of,
    url_host,
)

PAYLOADS = Path(__file__).parent / "payloads"
RECEIVED = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
SIG_HEX = "9061e286b400447021ffe65434c09ebda4b58c3e4e59fa99297836da607c5f2e"

NEW_FORMATS = (
    HarborFormat(),
    QuayFormat(),
    DistributionFormat(),
    GitHubFormat(),
    JFrogFormat(),
    GARFormat(),
    ECRFormat(),
    NexusFormat(),
    AliyunFormat(),
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)


def ev(registry: str, action: str, **fields: Any) -> RegistryEvent:
    """A RegistryEvent whose id source follows from whether it has an id, as every parser sets it."""
    source = "sender" if fields.get("event_id") else "derived"
    return RegistryEvent(registry=registry, action=action, event_id_source=source, **fields)


def samples() -> list[str]:
    return sorted(path.name for path in PAYLOADS.glob("*.json") if not path.name.endswith(".headers.json"))


def headers_of(name: str) -> dict[str, str]:
    sidecar = PAYLOADS / name.replace(".json", ".headers.json")
    return json.loads(sidecar.read_text()) if sidecar.exists() else {}


def deliver(body: bytes, headers: dict[str, str] | None = None) -> Delivery:
    return Delivery("acme/webapp", "", body, RECEIVED, headers or {})


def parse_sample(name: str) -> tuple[str, list[RegistryEvent]]:
    """Recognise and parse a sample with its sidecar headers, as the gateway does."""
    body = (PAYLOADS / name).read_bytes()
    headers = headers_of(name)
    document = json.loads(body)
    sender = recognise(headers, document)
    return sender.name, list(sender.parse(deliver(body, headers), document))


def parse_with(
    fmt: IPayloadFormat, document: dict[str, Any], headers: dict[str, str] | None = None
) -> list[RegistryEvent]:
    return list(fmt.parse(deliver(json.dumps(document).encode(), headers), document))


def load(name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads((PAYLOADS / name).read_text())
    return result


def pubsub(data: dict[str, Any] | bytes | str, message_id: str = "42") -> dict[str, Any]:
    if isinstance(data, dict):
        data = json.dumps(data).encode()
    if isinstance(data, bytes):
        data = base64.b64encode(data).decode()
    return {
        "message": {"data": data, "messageId": message_id, "publishTime": "2026-01-05T07:00:00Z"},
        "subscription": "projects/p/subscriptions/s",
    }


# Every sample of the new formats, recognised with its sidecar headers and
# parsed, gives exactly these events (received at RECEIVED).
EXPECTED: dict[str, list[RegistryEvent]] = {
    "aliyun_no_full_name.json": [
        ev(
            "aliyun",
            "ignored",
            reason="untagged",
            time=RECEIVED,
            host="registry.ap-southeast-1.aliyuncs.com",
            repository="acme/webapp",
            digest="sha256:83f41ba68f16ad763eb60bb17c359add99d938060a48a719e74d4dd9e11c4d9a",
        ),
    ],
    "aliyun_push.json": [
        ev(
            "aliyun",
            "push",
            time=RECEIVED,
            host="registry.cn-hangzhou.aliyuncs.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:391e7678ad0feb1e9f5cc76f75a76f125ad1de7b989bcf1536d472922745d710",
        ),
    ],
    "distribution_deletes.json": [
        ev(
            "distribution",
            "delete",
            time=utc(2026, 1, 5, 14),
            host="registry.example.com",
            repository="acme/webapp",
            digest="sha256:2c8f8a506303baeb5dffe637bb8bba0583a01c68aa9c200756c49e93b7525ad4",
            event_id="distribution:8f7a6b5c-4d3e-4f2a-9b1c-0d9e8f7a6b5c",
            actor="admin",
        ),
        ev(
            "distribution",
            "delete",
            time=utc(2026, 1, 5, 14, 0, 1),
            host="registry.example.com",
            repository="acme/webapp",
            tag="v1.4.1",
            event_id="distribution:9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
            actor="admin",
        ),
        ev(
            "distribution",
            "ignored",
            reason="layer",
            time=utc(2026, 1, 5, 14, 0, 2),
            host="registry.example.com",
            repository="acme/webapp",
            digest="sha256:01896fb8a86241916986d0333a9d089b1cf556e0e0a75720b7a17c4721182efb",
            media_type="application/octet-stream",
            event_id="distribution:0b9c8d7e-6f5a-4b4c-9d3e-2f1a0b9c8d7e",
            actor="admin",
        ),
    ],
    "distribution_push.json": [
        ev(
            "distribution",
            "push",
            time=utc(2026, 1, 5, 8, 30),
            host="registry.example.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:30e2e2d3d38fce9edd38818f7013d617b94891a6074723d4372b76b12747f05d",
            media_type="application/vnd.oci.image.index.v1+json",
            artifact_class="image",
            event_id="distribution:2f1e0d9c-8b7a-4f6e-9d5c-4b3a2f1e0d9c",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "ignored",
            reason="layer",
            time=utc(2026, 1, 5, 8, 29, 59, 900000),
            host="registry.example.com",
            repository="acme/webapp",
            digest="sha256:28caa158380f1a85749c431fe3991e67ec8443b6321a7222ce6008d3332fed71",
            media_type="application/vnd.oci.image.layer.v1.tar+gzip",
            event_id="distribution:3a2b1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d",
        ),
    ],
    "distribution_v1_mixed.json": [
        ev(
            "distribution",
            "ignored",
            reason="pull",
            time=utc(2026, 1, 5, 13, 40, 0, 500000),
            host="registry.example.com:5000",
            repository="acme/webapp",
            digest="sha256:2c8f8a506303baeb5dffe637bb8bba0583a01c68aa9c200756c49e93b7525ad4",
            media_type="application/vnd.docker.distribution.manifest.v2+json",
            artifact_class="image",
            event_id="distribution:4b3c2d1e-0f9a-4b8c-9d7e-6f5a4b3c2d1e",
        ),
        ev(
            "distribution",
            "ignored",
            reason="mount",
            time=utc(2026, 1, 5, 13, 41),
            host="registry.example.com:5000",
            repository="acme/other",
            digest="sha256:01896fb8a86241916986d0333a9d089b1cf556e0e0a75720b7a17c4721182efb",
            media_type="application/vnd.docker.image.rootfs.diff.tar.gzip",
            event_id="distribution:5c4d3e2f-1a0b-4c9d-8e7f-7a6b5c4d3e2f",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 13, 42),
            host="registry.example.com:5000",
            repository="acme/webapp",
            digest="sha256:f6afcc921ef6abdd451da312b28dc306ab5164837734889bcf783c73d0938d6d",
            media_type="application/vnd.docker.distribution.manifest.v2+json",
            artifact_class="image",
            event_id="distribution:6d5e4f3a-2b1c-4d0e-9f8a-8b7c6d5e4f3a",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "push",
            time=utc(2026, 1, 5, 13, 43),
            host="registry.example.com:5000",
            repository="acme/webapp",
            tag="v1.4.3",
            digest="sha256:9061e286b400447021ffe65434c09ebda4b58c3e4e59fa99297836da607c5f2e",
            media_type="application/vnd.docker.distribution.manifest.list.v2+json",
            artifact_class="image",
            event_id="distribution:7e6f5a4b-3c2d-4e1f-8a9b-9c8d7e6f5a4b",
            actor="ci-bot",
        ),
    ],
    "distribution_v2_artifacts.json": [
        ev(
            "distribution",
            "ignored",
            reason="signature",
            time=utc(2026, 1, 5, 15),
            host="registry.example.com",
            repository="acme/webapp",
            tag="sha256-9061e286b400447021ffe65434c09ebda4b58c3e4e59fa99297836da607c5f2e.sig",
            digest="sha256:f042bbaf1af5bc6df09d6d07c9618c497396b46e63649f69eb7c0c5f74c9ac7e",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="other",
            event_id="distribution:1c0d9e8f-7a6b-4c5d-8e4f-3a2b1c0d9e8f",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "push",
            time=utc(2026, 1, 5, 15, 0, 1),
            host="registry.example.com",
            repository="acme/policies",
            tag="v3",
            digest="sha256:06e99502398be16d74a92f3b884f84a125ebffa0e5d1a604c2205a5f387e3e21",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="other",
            event_id="distribution:2d1e0f9a-8b7c-4d6e-9f5a-4b3c2d1e0f9a",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "ignored",
            reason="signature",
            time=utc(2026, 1, 5, 15, 0, 2),
            host="registry.example.com",
            repository="acme/webapp",
            digest="sha256:8e64c994212f6515557acb689b1e65883a1bc081400f57da8f9453c17506f618",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="other",
            event_id="distribution:3e2f1a0b-9c8d-4e7f-8a6b-5c4d3e2f1a0b",
            actor="ci-bot",
        ),
        ev(
            "distribution",
            "push",
            time=utc(2026, 1, 5, 15, 0, 3),
            host="registry.example.com",
            repository="acme/webapp",
            tag="v1.5.0",
            digest="sha256:aa368bacb99bbdbb95d66b15bc9ae75150fae75fe760cab67df0fa2abf350f9c",
            media_type="application/vnd.oci.image.manifest.v1+json",
            event_id="distribution:4f3a2b1c-0d9e-4f8a-9b7c-6d5e4f3a2b1c",
        ),
    ],
    "ecr_delete.json": [
        ev(
            "ecr",
            "delete",
            time=utc(2026, 1, 5, 6, 10),
            host="111122223333.dkr.ecr.eu-west-1.amazonaws.com",
            repository="acme/webapp",
            tag="v1.4.1",
            digest="sha256:0d349b6ab4a2216dca3cc3d3a729447691de812a5c1a63fd24e7eaa0e6b4cc7b",
            event_id="ecr:e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b",
        ),
    ],
    "ecr_failure.json": [
        ev(
            "ecr",
            "ignored",
            reason="failure",
            time=utc(2026, 1, 5, 6, 10),
            host="111122223333.dkr.ecr.eu-west-1.amazonaws.com",
            repository="acme/webapp",
            tag="v1.4.3",
            event_id="ecr:e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b",
        ),
    ],
    "ecr_push.json": [
        ev(
            "ecr",
            "push",
            time=utc(2026, 1, 5, 6),
            host="111122223333.dkr.ecr.eu-west-1.amazonaws.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:e9138fc1419e1d01b07d37d795e057e42df43a5214eb11013870a6b246e3e50c",
            media_type="application/vnd.oci.image.index.v1+json",
            artifact_class="image",
            event_id="ecr:d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6",
        ),
    ],
    "ecr_scan.json": [
        ev(
            "ecr",
            "ignored",
            reason="unsupported event",
            time=utc(2026, 1, 5, 6, 20),
            host="111122223333.dkr.ecr.cn-north-1.amazonaws.com.cn",
            repository="acme/webapp",
            digest="sha256:51f16e3225203f3bb0e91b8aba43127380b11f8a69b1c566de9f1532dc2f924f",
            event_id="ecr:f3a4b5c6-d7e8-4f9a-8b1c-2d3e4f5a6b7c",
        ),
    ],
    "ecr_untagged.json": [
        ev(
            "ecr",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 6, 10),
            host="111122223333.dkr.ecr.eu-west-1.amazonaws.com",
            repository="acme/webapp",
            digest="sha256:36ddf65954f810a639e6ee52fd8a5bab56214befb3b633edd2d672f4cbda990b",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="image",
            event_id="ecr:e2f3a4b5-c6d7-4e8f-9a0b-1c2d3e4f5a6b",
        ),
    ],
    "gar_delete.json": [
        ev(
            "gar",
            "delete",
            time=utc(2026, 1, 5, 7, 5),
            host="europe-west1-docker.pkg.dev",
            repository="acme-prod/apps/webapp",
            tag="v1.4.1",
            event_id="gar:11223344556688",
        ),
    ],
    "gar_gcr_insert.json": [
        ev(
            "gar",
            "push",
            time=utc(2026, 1, 5, 7, 10),
            host="gcr.io",
            repository="acme-prod/webapp",
            tag="latest",
            digest="sha256:abe609a59390de52c745bcc8857c6603ba983a8c7ba20122dedb0ed98927e686",
            event_id="gar:99887766554433",
        ),
    ],
    "gar_insert.json": [
        ev(
            "gar",
            "push",
            time=utc(2026, 1, 5, 7, 0, 0, 123000),
            host="europe-west1-docker.pkg.dev",
            repository="acme-prod/apps/webapp",
            tag="v1.4.2",
            digest="sha256:8293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f6071",
            event_id="gar:11223344556677",
        ),
    ],
    "gar_insert_untagged.json": [
        ev(
            "gar",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 6, 59, 59, 500000),
            host="europe-west1-docker.pkg.dev",
            repository="acme-prod/apps/webapp",
            digest="sha256:b9a12c15a6c32b5cfe77330382e762ed183c9e74126788c4e724bbc662ef4db9",
            event_id="gar:11223344556699",
        ),
    ],
    "github_chart.json": [
        ev(
            "github",
            "push",
            time=utc(2026, 1, 5, 7, 40),
            host="ghcr.io",
            repository="acme/charts/webapp",
            tag="0.3.1",
            digest="sha256:ab87b9e0d7aab8dbb46de4da385b370a1b1c9bcbdb7e8e45a5d6afeacec29b39",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="chart",
            event_id="github:4f5a6b7c-1e2f-11f0-8a1b-0242ac120002",
            actor="acme-ci[bot]",
        ),
    ],
    "github_npm.json": [
        ev(
            "github",
            "ignored",
            reason="not a container",
            time=RECEIVED,
            repository="acme/webapp-client",
            event_id="github:5a6b7c8d-1e2f-11f0-8a1b-0242ac120002",
            actor="acme-ci[bot]",
        ),
    ],
    "github_package.json": [
        ev(
            "github",
            "push",
            time=utc(2026, 1, 5, 7, 30),
            host="ghcr.io",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:5a310fca04cdbe8c3f048dd15af7d0692e64de7f95749268bd49312a3dc8fe4c",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="image",
            event_id="github:0b9a8c7d-1e2f-11f0-8a1b-0242ac120002",
            actor="acme-ci[bot]",
        ),
    ],
    "github_ping.json": [
        ev("github", "ping", time=RECEIVED, event_id="github:1c2d3e4f-1e2f-11f0-8a1b-0242ac120002", actor="acme-admin"),
    ],
    "github_registry_package.json": [
        ev(
            "github",
            "push",
            time=utc(2026, 1, 5, 7, 31),
            host="ghcr.io",
            repository="acme/webapp",
            tag="v1.4.3",
            digest="sha256:eceba3e62c8349f1e0fb702a683e0ed43f181c250d8ebe7808e1fb78dc5a5528",
            media_type="application/vnd.oci.image.index.v1+json",
            artifact_class="image",
            event_id="github:2d3e4f5a-1e2f-11f0-8a1b-0242ac120002",
            actor="acme-ci[bot]",
        ),
    ],
    "github_untagged.json": [
        ev(
            "github",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 7, 29, 59),
            host="ghcr.io",
            repository="acme/webapp",
            digest="sha256:4e747d29ca2e13483aa52c9db4c160e462109f0ff4614feaf45db6e8e1f67491",
            media_type="application/vnd.oci.image.manifest.v1+json",
            artifact_class="image",
            event_id="github:3e4f5a6b-1e2f-11f0-8a1b-0242ac120002",
            actor="acme-ci[bot]",
        ),
    ],
    "harbor_cloudevents_digest_only.json": [
        ev(
            "harbor",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 9),
            host="harbor.example.com",
            repository="acme/webapp",
            digest="sha256:f64ad735621ce26a94f1047ac6ab791ca1a807c72369c1f63dc2839a3c74d2e1",
            event_id="harbor:5e6f7a8b-9c0d-4e1f-8a2b-3c4d5e6f7a8b",
            actor="robot$ci-pusher",
        ),
    ],
    "harbor_cloudevents_push.json": [
        ev(
            "harbor",
            "push",
            time=utc(2026, 1, 5, 9, 5, 0, 250000),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.4.3",
            digest="sha256:db836cab3d96c765a684dce635526ec3093c50fbf9d1de634bdb30335573266d",
            event_id="harbor:6f7a8b9c-0d1e-4f2a-8b3c-4d5e6f7a8b9c",
            actor="robot$ci-pusher",
        ),
    ],
    "harbor_cloudevents_quota.json": [
        ev(
            "harbor",
            "ignored",
            reason="quota",
            time=utc(2026, 1, 5, 9, 10),
            repository="acme/webapp",
            event_id="harbor:7a8b9c0d-1e2f-4a3b-8c4d-5e6f7a8b9c0d",
        ),
    ],
    "harbor_delete.json": [
        ev(
            "harbor",
            "delete",
            time=utc(2026, 1, 5, 8, 5),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.4.1",
            digest="sha256:4bed6495d1a2ad7335ed3f95ec676559c5df7661512008d5ececbfa49bd5282f",
            actor="admin",
        ),
    ],
    "harbor_legacy_push_image.json": [
        ev(
            "harbor",
            "push",
            time=utc(2020, 4, 15, 3, 45, 8),
            host="harbor.example.com:8443",
            repository="library/busybox",
            tag="latest",
            digest="sha256:56a070913494c31833c67bc822a3503fc43c56cad03bfa48d082e4ed9302eb6a",
            actor="admin",
        ),
    ],
    "harbor_multi_resource.json": [
        ev(
            "harbor",
            "push",
            time=utc(2026, 1, 5, 8, 10),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.5.0",
            digest="sha256:c01818afbdd0bb15a6255c491d6b645c5c30b85114dfb563f6862fe15de462d3",
            actor="robot$ci-pusher",
        ),
        ev(
            "harbor",
            "ignored",
            reason="untagged",
            time=utc(2026, 1, 5, 8, 10),
            host="harbor.example.com",
            repository="acme/webapp",
            digest="sha256:c01818afbdd0bb15a6255c491d6b645c5c30b85114dfb563f6862fe15de462d3",
            actor="robot$ci-pusher",
        ),
        ev(
            "harbor",
            "ignored",
            reason="signature",
            time=utc(2026, 1, 5, 8, 10),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="sha256-c01818afbdd0bb15a6255c491d6b645c5c30b85114dfb563f6862fe15de462d3.sig",
            digest="sha256:3fdf902ced42562025bf02e5e725459940b040893f1351728a5a88439fb0e3d5",
            artifact_class="other",
            actor="robot$ci-pusher",
        ),
    ],
    "harbor_pull.json": [
        ev(
            "harbor",
            "ignored",
            reason="pull",
            time=utc(2026, 1, 5, 8, 6, 40),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:1ceeae2456181c3ea9c33b0adbf78fb332a98d361fa603ffb665da4f8ab538a1",
            actor="robot$deployer",
        ),
    ],
    "harbor_push.json": [
        ev(
            "harbor",
            "push",
            time=utc(2026, 1, 5, 8),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:8c809382f6bf00d3057e26b3a4acb35699653591c98f036a432542fce53c66a8",
            actor="robot$ci-pusher",
        ),
    ],
    "harbor_scanning_completed.json": [
        ev(
            "harbor",
            "ignored",
            reason="scan",
            time=utc(2026, 1, 5, 8, 8, 20),
            host="harbor.example.com",
            repository="acme/webapp",
            tag="v1.4.2",
            digest="sha256:1ceeae2456181c3ea9c33b0adbf78fb332a98d361fa603ffb665da4f8ab538a1",
            actor="auto",
        ),
    ],
    "jfrog_artifact_deployed.json": [
        ev(
            "jfrog",
            "ignored",
            reason="unsupported event",
            time=RECEIVED,
            host="acme.jfrog.example",
            actor="jfrt@01abc/users/ci-bot",
        ),
    ],
    "jfrog_deleted.json": [
        ev(
            "jfrog",
            "delete",
            time=RECEIVED,
            host="acme.jfrog.example",
            repository="docker-local/acme/webapp",
            tag="v1.4.1",
            digest="sha256:59f4c64e662f0daa78b929c42a9eb6c52630811b6f12651fc605ba405c0e6ded",
            media_type="application/vnd.docker.distribution.manifest.v2+json",
            artifact_class="image",
            actor="jfrt@01abc/users/admin",
        ),
    ],
    "jfrog_oci_manifest.json": [
        ev(
            "jfrog",
            "push",
            time=RECEIVED,
            host="acme.jfrog.example:8443",
            repository="oci-local/charts/webapp",
            tag="0.3.1",
            digest="sha256:5bae559b5555e5aa0fb23801671d56df822abea2cb7260f3df04e0ef56aaa797",
            media_type="application/vnd.oci.image.manifest.v1+json",
            actor="jfrt@01abc/users/ci-bot",
        ),
    ],
    "jfrog_promoted.json": [
        ev(
            "jfrog",
            "ignored",
            reason="unsupported event",
            time=RECEIVED,
            host="acme.jfrog.example",
            repository="docker-local/acme/webapp",
            tag="v1.4.2",
            digest="sha256:4ed6d792b90560b3e0aae1cd102e4f5fb540225c6cdb8295561249f287ce3392",
            artifact_class="image",
            actor="jfrt@01abc/users/release-bot",
        ),
    ],
    "jfrog_push.json": [
        ev(
            "jfrog",
            "push",
            time=RECEIVED,
            host="acme.jfrog.example",
            repository="docker-local/acme/webapp",
            tag="v1.4.2",
            digest="sha256:edbc780df4a7bdaaf48abe972545d50a13af5112bd1c8b22247bb446bfa694a0",
            media_type="application/vnd.docker.distribution.manifest.list.v2+json",
            artifact_class="image",
            actor="jfrt@01abc/users/ci-bot",
        ),
    ],
    "nexus_asset.json": [
        ev(
            "nexus",
            "ignored",
            reason="unsupported event",
            time=utc(2026, 1, 5, 5),
            event_id="nexus:9b3f4e5d-6c7a-4b8c-9d0e-2f3a4b5c6d7e",
            actor="ci-bot/10.0.0.12",
        ),
    ],
    "nexus_created.json": [
        ev(
            "nexus",
            "push",
            time=utc(2026, 1, 5, 5),
            repository="acme/webapp",
            tag="v1.4.2",
            event_id="nexus:7f1d2c3b-4a5e-4f6a-9b8c-0d1e2f3a4b5c",
            actor="ci-bot/10.0.0.12",
        ),
    ],
    "nexus_deleted.json": [
        ev(
            "nexus",
            "delete",
            time=utc(2026, 1, 5, 5, 30),
            repository="acme/webapp",
            tag="v1.4.1",
            event_id="nexus:8a2e3d4c-5b6f-4a7b-8c9d-1e2f3a4b5c6d",
            actor="admin/10.0.0.2",
        ),
    ],
    "nexus_maven.json": [
        ev(
            "nexus",
            "ignored",
            reason="not docker",
            time=utc(2026, 1, 5, 5, 10),
            event_id="nexus:0c4a5f6e-7d8b-4c9d-8e1f-3a4b5c6d7e8f",
            actor="ci-bot/10.0.0.12",
        ),
    ],
    "quay_build_success.json": [
        ev(
            "quay",
            "ignored",
            reason="unsupported event",
            time=RECEIVED,
            host="quay.example.com",
            repository="acme/webapp",
        ),
    ],
    "quay_legacy_push.json": [
        ev("quay", "push", time=RECEIVED, host="quay.io", repository="acme/webapp", tag="v1.4.2"),
        ev("quay", "push", time=RECEIVED, host="quay.io", repository="acme/webapp", tag="latest"),
    ],
    "quay_push.json": [
        ev("quay", "push", time=RECEIVED, host="quay.example.com", repository="acme/webapp", tag="v1.4.2"),
    ],
    "quay_test.json": [
        ev(
            "quay",
            "ignored",
            reason="test",
            time=RECEIVED,
            host="quay.example.com",
            repository="acme/webapp",
            tag="latest",
        ),
        ev(
            "quay",
            "ignored",
            reason="test",
            time=RECEIVED,
            host="quay.example.com",
            repository="acme/webapp",
            tag="foo",
        ),
    ],
}


def test_formats_in_recognition_order() -> None:
    """FORMATS follows docs/registries.md section 2 (Harbor at its CloudEvents slot), generic last."""
    assert [each.name for each in FORMATS] == [
        "github",
        "nexus",
        "jfrog",
        "distribution",
        "harbor",
        "ecr",
        "gar",
        "acr",
        "quay",
        "aliyun",
        "dockerhub",
        "generic",
    ]


@pytest.mark.parametrize("fmt", NEW_FORMATS, ids=lambda fmt: fmt.name)
def test_new_formats_provide_the_interface(fmt: IPayloadFormat) -> None:
    """Each new format implements IPayloadFormat."""
    assert verifyObject(IPayloadFormat, fmt)


def test_signature_schemes() -> None:
    """GitHub, Nexus and JFrog sign the body; every other sender cannot."""
    assert {each.name: each.signatures for each in FORMATS} == {
        "github": (HmacScheme("x-hub-signature-256", "sha256", "sha256="),),
        "nexus": (HmacScheme("x-nexus-webhook-signature", "sha1"),),
        "jfrog": (HmacScheme("x-jfrog-event-auth", "sha256", "", or_token=True),),
        "distribution": (),
        "harbor": (),
        "ecr": (),
        "gar": (),
        "acr": (),
        "quay": (),
        "aliyun": (),
        "dockerhub": (),
        "generic": (),
    }


@pytest.mark.parametrize("name", samples())
def test_recognition_of_every_sample_with_headers(name: str) -> None:
    """Every sample, with its sidecar headers, is recognised as the format its file name starts with."""
    assert recognise(headers_of(name), load(name)).name == name.split("_")[0]


def test_sidecars_are_header_objects_of_samples() -> None:
    """Each sidecar belongs to a sample and holds lower-case header names with string values."""
    for sidecar in sorted(PAYLOADS.glob("*.headers.json")):
        assert (PAYLOADS / sidecar.name.replace(".headers.json", ".json")).exists(), sidecar.name
        headers = json.loads(sidecar.read_text())
        assert all(isinstance(value, str) for value in headers.values()), sidecar.name
        assert all(name == name.lower() for name in headers), sidecar.name


def test_every_new_sample_has_expected_events() -> None:
    """The table of expected events covers every sample of the new formats."""
    new = {fmt.name for fmt in NEW_FORMATS}
    assert sorted(EXPECTED) == [name for name in samples() if name.split("_")[0] in new]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_events(name: str) -> None:
    """Each sample parses into exactly the expected events, in order."""
    sender, events = parse_sample(name)
    assert sender == name.split("_")[0]
    assert events == EXPECTED[name]


@pytest.mark.parametrize(
    ("name", "build"),
    [
        ("aliyun_push.json", "image_push"),
        ("aliyun_no_full_name.json", None),
        ("distribution_push.json", "image_push"),
        ("distribution_v1_mixed.json", "image_push"),
        ("distribution_deletes.json", "image_delete"),
        ("distribution_v2_artifacts.json", "artifact_push"),
        ("ecr_push.json", "image_push"),
        ("ecr_delete.json", "image_delete"),
        ("ecr_failure.json", None),
        ("ecr_untagged.json", None),
        ("ecr_scan.json", None),
        ("gar_insert.json", "image_push"),
        ("gar_gcr_insert.json", "image_push"),
        ("gar_delete.json", "image_delete"),
        ("gar_insert_untagged.json", None),
        ("github_package.json", "image_push"),
        ("github_registry_package.json", "image_push"),
        ("github_chart.json", "chart_push"),
        ("github_untagged.json", None),
        ("github_npm.json", None),
        ("github_ping.json", None),
        ("harbor_push.json", "image_push"),
        ("harbor_cloudevents_push.json", "image_push"),
        ("harbor_legacy_push_image.json", "image_push"),
        ("harbor_multi_resource.json", "image_push"),
        ("harbor_delete.json", "image_delete"),
        ("harbor_cloudevents_digest_only.json", None),
        ("harbor_cloudevents_quota.json", None),
        ("harbor_pull.json", None),
        ("harbor_scanning_completed.json", None),
        ("jfrog_push.json", "image_push"),
        ("jfrog_oci_manifest.json", "image_push"),
        ("jfrog_deleted.json", "image_delete"),
        ("jfrog_promoted.json", None),
        ("jfrog_artifact_deployed.json", None),
        ("nexus_created.json", "image_push"),
        ("nexus_deleted.json", "image_delete"),
        ("nexus_asset.json", None),
        ("nexus_maven.json", None),
        ("quay_push.json", "image_push"),
        ("quay_legacy_push.json", "image_push"),
        ("quay_test.json", None),
        ("quay_build_success.json", None),
    ],
)
def test_what_becomes_a_build(name: str, build: str | None) -> None:
    """The gateway's rules turn each sample into this Brigade event type, or into no build."""
    _, events = parse_sample(name)
    buildable = [event for event in events if event.action in BUILDABLE]
    assert (event_type(buildable[0]) if buildable else None) == build


# Recognition: the look-alikes of docs/registries.md section 2.

DOCKERHUB_FULL = {
    "callback_url": "https://registry.hub.docker.com/u/acme/webapp/hook/2141b5bi5i5b02bec211i4eeih0242eg11000a/",
    "push_data": {
        "images": None,
        "media_type": "application/vnd.oci.image.index.v1+json",
        "pushed_at": 1.417566161e09,
        "pusher": "acme-ci",
        "tag": "v1.4.2",
    },
    "repository": {
        "comment_count": 0,
        "date_created": 1.417494799e09,
        "description": "",
        "dockerfile": "",
        "full_description": "",
        "is_official": False,
        "is_private": True,
        "is_trusted": False,
        "name": "webapp",
        "namespace": "acme",
        "owner": "acme",
        "repo_name": "acme/webapp",
        "repo_url": "https://registry.hub.docker.com/u/acme/webapp/",
        "star_count": 0,
        "status": "Active",
    },
}
EVENT_GRID_CLOUDEVENT = {
    "specversion": "1.0",
    "type": "Microsoft.ContainerRegistry.ImagePushed",
    "source": "/subscriptions/s/resourceGroups/g/providers/Microsoft.ContainerRegistry/registries/acme",
    "id": "831e1650-001e-001b-66ab-eeb76e069631",
    "time": "2026-01-05T10:15:30Z",
    "data": {
        "id": "0f4c2b8e",
        "timestamp": "2026-01-05T10:15:30Z",
        "action": "push",
        "target": {"repository": "team/webapp", "tag": "v1.4.2"},
    },
}


@pytest.mark.parametrize(
    ("headers", "document", "expected"),
    [
        ({}, load("dockerhub_push.json"), "dockerhub"),
        ({}, DOCKERHUB_FULL, "dockerhub"),
        ({}, load("aliyun_push.json"), "aliyun"),
        ({}, {"push_data": {"tag": "v1"}, "repository": {"repo_full_name": "acme/webapp"}}, "aliyun"),
        ({}, {"push_data": {"tag": "v1"}, "repository": {"region": "cn-hangzhou", "name": "webapp"}}, "aliyun"),
        ({}, load("acr_push.json"), "acr"),
        ({}, {"events": [load("acr_push.json")]}, "distribution"),
        ({"content-type": "application/vnd.docker.distribution.events.v1+json"}, load("acr_push.json"), "distribution"),
        ({"content-type": "application/vnd.docker.distribution.events.v2+json"}, {"events": []}, "distribution"),
        ({}, {"events": []}, "generic"),
        ({}, {"events": [1, "x"]}, "generic"),
        ({}, EVENT_GRID_CLOUDEVENT, "generic"),
        ({"content-type": "application/cloudevents+json"}, EVENT_GRID_CLOUDEVENT, "generic"),
        ({"content-type": "application/cloudevents+json"}, {"type": "harbor.artifact.pushed", "data": {}}, "harbor"),
        ({"content-type": "application/cloudevents+json"}, {"type": "PUSH_ARTIFACT", "event_data": {}}, "generic"),
        ({}, {"type": "pushImage", "event_data": {}}, "harbor"),
        ({}, {"type": "push", "event_data": {}}, "generic"),
        ({}, {"type": "PUSH_ARTIFACT", "event_data": "x"}, "generic"),
        ({}, {"docker_url": "quay.io/acme/webapp"}, "quay"),
        ({}, {"source": "aws.s3", "detail-type": "Object Created"}, "generic"),
        ({}, {"source": "aws.ecr", "detail-type": "ECR Image Scan"}, "ecr"),
        ({"x-goog-pubsub-message-id": "1"}, {"action": "INSERT", "tag": "gcr.io/p/i:v1"}, "gar"),
        ({}, {"action": "INSERT", "tag": "gcr.io/p/i:v1"}, "generic"),
        ({}, {"message": {"data": "e30="}}, "generic"),
        ({}, load("github_package.json"), "generic"),
        ({"x-github-event": "package"}, load("acr_push.json"), "github"),
        ({"x-nexus-webhook-id": "rm:repository:component"}, load("acr_push.json"), "nexus"),
        ({"x-jfrog-event-auth": "t"}, {"anything": 1}, "jfrog"),
        ({}, {"domain": "docker", "event_type": "pushed"}, "generic"),
        # Ties go to the earlier test of section 2.
        ({}, {"events": [{}], "domain": "docker", "event_type": "pushed", "jpd_origin": "https://j"}, "jfrog"),
        ({}, {"events": [{}], "specversion": "1.0", "type": "harbor.artifact.pushed"}, "distribution"),
        ({}, {**load("acr_push.json"), "source": "aws.ecr", "detail-type": "ECR Image Action"}, "ecr"),
        ({}, {**load("quay_push.json"), "push_data": {}, "repository": {"repo_name": "a/b"}}, "quay"),
        ({}, {"push_data": {}, "repository": {"repo_name": "a/b", "region": "cn-hangzhou"}}, "aliyun"),
    ],
)
def test_recognition_of_look_alikes(headers: dict[str, str], document: dict[str, Any], expected: str) -> None:
    """Formats that share marks are told apart as section 2 orders them; other CloudEvents fall to generic."""
    assert recognise(headers, document).name == expected


# Harbor (section 4.3).

HARBOR_REPOSITORY = {"name": "webapp", "namespace": "acme", "repo_full_name": "acme/webapp"}


def harbor(kind: str, resources: Any, repository: Any = HARBOR_REPOSITORY) -> dict[str, Any]:
    return {
        "type": kind,
        "occur_at": 1767600000,
        "operator": "admin",
        "event_data": {"resources": resources, "repository": repository},
    }


@pytest.mark.parametrize("resources", ["x", None, [1], [{"tag": "v1"}, "x"]])
def test_harbor_push_without_resource_list_is_bad_request(resources: Any) -> None:
    """A Harbor push whose resources are not a list of objects is refused with a fixed message."""
    with pytest.raises(BadRequest) as raised:
        parse_with(HarborFormat(), harbor("PUSH_ARTIFACT", resources))
    assert raised.value.message == "Harbor artifact event without a list of resources"


def test_harbor_push_with_no_resources_is_ignored() -> None:
    """An empty resources list is nothing to build."""
    assert parse_with(HarborFormat(), harbor("PUSH_ARTIFACT", [])) == [
        ev("harbor", "ignored", reason="no resources", time=utc(2026, 1, 5, 8), repository="acme/webapp", actor="admin")
    ]


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("REPLICATION", "replication"),
        ("TAG_RETENTION", "retention"),
        ("QUOTA_EXCEED", "quota"),
        ("SCANNING_FAILED", "scan"),
        ("SCANNING_STOPPED", "scan"),
        ("UPLOAD_CHART", "unsupported event"),
        ("DOWNLOAD_CHART", "pull"),
        ("CREATE_TAG", "unsupported event"),
        ("DELETE_TAG", "unsupported event"),
        ("pullImage", "pull"),
        ("scanningCompleted", "scan"),
        ("harbor.tag.created", "unsupported event"),
        ("harbor.scan.completed", "scan"),
        ("harbor.replication.status.changed", "replication"),
    ],
)
def test_harbor_other_types_are_ignored(kind: str, reason: str) -> None:
    """Every Harbor type but push and delete is ignored, with a reason, however odd its resources."""
    assert parse_with(HarborFormat(), harbor(kind, "not a list")) == [
        ev("harbor", "ignored", reason=reason, time=utc(2026, 1, 5, 8), repository="acme/webapp", actor="admin")
    ]


def test_harbor_repository_from_namespace_and_name_and_url() -> None:
    """Without repo_full_name the repository is namespace/name, else the path of resource_url."""
    resource = {"tag": "v1", "resource_url": "harbor.example.com/acme/api:v1"}
    assert parse_with(HarborFormat(), harbor("PUSH_ARTIFACT", [resource], {"namespace": "acme", "name": "web"})) == [
        ev(
            "harbor",
            "push",
            time=utc(2026, 1, 5, 8),
            host="harbor.example.com",
            repository="acme/web",
            tag="v1",
            actor="admin",
        )
    ]
    assert parse_with(HarborFormat(), harbor("PUSH_ARTIFACT", [resource], None)) == [
        ev(
            "harbor",
            "push",
            time=utc(2026, 1, 5, 8),
            host="harbor.example.com",
            repository="acme/api",
            tag="v1",
            actor="admin",
        )
    ]


def test_harbor_cloudevent_without_time_or_id() -> None:
    """A Harbor CloudEvent without time or id falls back to the receive time and a derived key."""
    document = {
        "specversion": "1.0",
        "type": "harbor.artifact.deleted",
        "data": {
            "resources": [{"digest": "sha256:" + "a" * 64, "tag": "sha256:" + "a" * 64}],
            "repository": HARBOR_REPOSITORY,
        },
    }
    assert parse_with(HarborFormat(), document) == [
        ev("harbor", "delete", time=RECEIVED, repository="acme/webapp", digest="sha256:" + "a" * 64)
    ]


# Quay (section 4.4).


@pytest.mark.parametrize("tags", ["v1", 3, None, True])
def test_quay_updated_tags_of_another_shape_is_bad_request(tags: Any) -> None:
    """updated_tags that is neither list nor object is refused."""
    with pytest.raises(BadRequest) as raised:
        parse_with(QuayFormat(), {"docker_url": "quay.io/acme/webapp", "updated_tags": tags})
    assert raised.value.message == "Quay repo_push without a list of updated tags"


def test_quay_odd_tags_and_port() -> None:
    """Quay tags fan out one by one; empty, invalid and signature tags are ignored; the host keeps its port."""
    document = {
        "docker_url": "Quay.Local:8443/acme/webapp",
        "updated_tags": ["v2", "", 7, "bad tag", f"sha256-{SIG_HEX}.att", f"sha256-{SIG_HEX}"],
    }
    base = {"time": RECEIVED, "host": "quay.local:8443", "repository": "acme/webapp"}
    assert parse_with(QuayFormat(), document) == [
        ev("quay", "push", tag="v2", **base),
        ev("quay", "ignored", reason="untagged", **base),
        ev("quay", "ignored", reason="untagged", **base),
        ev("quay", "ignored", reason="invalid tag", **base),
        ev("quay", "ignored", reason="signature", tag=f"sha256-{SIG_HEX}.att", artifact_class="other", **base),
        ev("quay", "ignored", reason="signature", tag=f"sha256-{SIG_HEX}", artifact_class="other", **base),
    ]


def test_quay_empty_updated_tags_is_ignored() -> None:
    """A repo_push naming no tags is nothing to build."""
    assert parse_with(QuayFormat(), {"docker_url": "quay.io/a/b", "repository": "a/b", "updated_tags": {}}) == [
        ev("quay", "ignored", reason="untagged", time=RECEIVED, host="quay.io", repository="a/b")
    ]


# Distribution (section 4.5).

DIST_V2 = {"content-type": "application/vnd.docker.distribution.events.v2+json"}


@pytest.mark.parametrize("events", ["x", None, {"id": "1"}])
def test_distribution_envelope_without_event_list_is_bad_request(events: Any) -> None:
    """An envelope whose events are not a list is not one Distribution sent: refused."""
    with pytest.raises(BadRequest) as raised:
        parse_with(DistributionFormat(), {"events": events}, DIST_V2)
    assert raised.value.message == "Distribution envelope without a list of events"


def test_distribution_empty_envelope_is_ignored() -> None:
    """An empty envelope is answered 2xx with no build."""
    assert parse_with(DistributionFormat(), {"events": []}, DIST_V2) == [
        ev("distribution", "ignored", reason="no events", time=RECEIVED)
    ]


def test_distribution_bad_events_never_reject_the_envelope() -> None:
    """Malformed events are ignored one by one, so the good one still builds and the queue never stalls."""
    good = load("distribution_push.json")["events"][0]
    document = {"events": ["x", {"action": 5}, {"action": "frobnicate", "target": []}, good]}
    events = parse_with(DistributionFormat(), document, DIST_V2)
    assert events[:3] == [
        ev("distribution", "ignored", reason="malformed", time=RECEIVED),
        ev("distribution", "ignored", reason="malformed", time=RECEIVED),
        ev("distribution", "ignored", reason="unsupported event", time=RECEIVED),
    ]
    assert events[3] == EXPECTED["distribution_push.json"][0]


def test_distribution_manifest_by_url_and_blob_by_config_type() -> None:
    """A push is a manifest by media type or /manifests/ URL; a config blob is a layer; optional fields are optional."""
    document = {
        "events": [
            {
                "id": "a",
                "action": "push",
                "target": {"repository": "r/s", "tag": "v1", "url": "https://h/v2/r/s/manifests/sha256:" + "c" * 64},
            },
            {
                "id": "b",
                "action": "push",
                "target": {
                    "repository": "r/s",
                    "mediaType": "application/vnd.oci.image.config.v1+json",
                    "digest": "sha256:" + "d" * 64,
                    "url": "https://h/v2/r/s/blobs/sha256:" + "d" * 64,
                },
            },
            {"id": "c", "action": "delete", "target": {"repository": "r/s"}},
        ]
    }
    assert parse_with(DistributionFormat(), document) == [
        ev("distribution", "push", time=RECEIVED, repository="r/s", tag="v1", event_id="distribution:a"),
        ev(
            "distribution",
            "ignored",
            reason="layer",
            time=RECEIVED,
            repository="r/s",
            digest="sha256:" + "d" * 64,
            media_type="application/vnd.oci.image.config.v1+json",
            artifact_class="image",
            event_id="distribution:b",
        ),
        ev("distribution", "delete", time=RECEIVED, repository="r/s", event_id="distribution:c"),
    ]


def test_distribution_descriptor_artifact_types() -> None:
    """3.x descriptors: a Helm artifactType is a chart, an SBOM type is ignored even when tagged."""

    def push(artifact_type: str, tag: str) -> dict[str, Any]:
        return {
            "id": tag,
            "action": "push",
            "target": {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": artifact_type,
                "repository": "r/s",
                "tag": tag,
                "platform": {"os": "linux", "architecture": "amd64"},
                "references": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}],
            },
        }

    document = {
        "events": [push("application/vnd.cncf.helm.config.v1+json", "0.3.1"), push("application/spdx+json", "sbom")]
    }
    manifest = "application/vnd.oci.image.manifest.v1+json"
    assert parse_with(DistributionFormat(), document, DIST_V2) == [
        ev(
            "distribution",
            "push",
            time=RECEIVED,
            repository="r/s",
            tag="0.3.1",
            media_type=manifest,
            artifact_class="chart",
            event_id="distribution:0.3.1",
        ),
        ev(
            "distribution",
            "ignored",
            reason="signature",
            time=RECEIVED,
            repository="r/s",
            tag="sbom",
            media_type=manifest,
            artifact_class="other",
            event_id="distribution:sbom",
        ),
    ]


# GitHub (section 4.6).

GITHUB = {"x-github-event": "package", "x-github-delivery": "d-1"}


def github_package(**version: Any) -> dict[str, Any]:
    return {
        "action": "published",
        "sender": {"login": "octo"},
        "package": {"name": "WebApp", "namespace": "Acme", "package_type": "CONTAINER", "package_version": version},
    }


def test_github_without_event_header_is_ignored() -> None:
    """A body handed to GitHub (by ?registry=github) without X-GitHub-Event is not guessed at."""
    assert parse_with(GitHubFormat(), load("github_package.json")) == [
        ev("github", "ignored", reason="no event header", time=RECEIVED, actor="acme-ci[bot]")
    ]


def test_github_other_events_are_ignored() -> None:
    """Events other than package, registry_package and ping are answered 2xx with no build."""
    assert parse_with(GitHubFormat(), {"action": "opened"}, {"x-github-event": "issues", "x-github-delivery": "d"}) == [
        ev("github", "ignored", reason="unsupported event", time=RECEIVED, event_id="github:d")
    ]


@pytest.mark.parametrize("package", [None, "x", []])
def test_github_package_event_without_package_is_bad_request(package: Any) -> None:
    """A package event lacking its package object is refused."""
    with pytest.raises(BadRequest) as raised:
        parse_with(GitHubFormat(), {"action": "published", "package": package}, GITHUB)
    assert raised.value.message == "GitHub package event without a package"


def test_github_minimal_package_and_other_body_name() -> None:
    """Without package_url: namespace/name lower-cased, on ghcr.io; the other object name is read too."""
    version = {"container_metadata": {"tag": {"name": "v1"}}}
    document = github_package(**version)
    document["registry_package"] = document.pop("package")
    assert parse_with(GitHubFormat(), document, GITHUB) == [
        ev(
            "github",
            "push",
            time=RECEIVED,
            host="ghcr.io",
            repository="acme/webapp",
            tag="v1",
            event_id="github:d-1",
            actor="octo",
        )
    ]


def test_github_updated_legacy_docker_package_without_delivery_id() -> None:
    """An updated legacy docker package builds, timed by updated_at; no delivery header means no sender id."""
    document = github_package(
        created_at="2025-01-01T00:00:00Z",
        updated_at="2026-01-05T07:45:00+01:00",
        version="sha256:" + "e" * 64,
        package_url="docker.pkg.github.com/acme/webapp/web:v2",
        container_metadata={"tag": {"name": "v2"}},
    )
    document["action"] = "updated"
    document["package"]["package_type"] = "docker"
    assert parse_with(GitHubFormat(), document, {"x-github-event": "package"}) == [
        ev(
            "github",
            "push",
            time=utc(2026, 1, 5, 6, 45),
            host="docker.pkg.github.com",
            repository="acme/webapp/web",
            tag="v2",
            digest="sha256:" + "e" * 64,
            actor="octo",
        )
    ]


def test_github_other_actions_and_signatures_are_ignored() -> None:
    """Only published and updated build; a cosign signature tag never does."""
    signature = github_package(container_metadata={"tag": {"name": f"sha256-{SIG_HEX}.sig"}})
    removed = {**github_package(container_metadata={"tag": {"name": "v1"}}), "action": "removed"}
    base = {"time": RECEIVED, "host": "ghcr.io", "repository": "acme/webapp", "event_id": "github:d-1", "actor": "octo"}
    assert parse_with(GitHubFormat(), signature, GITHUB) == [
        ev("github", "ignored", reason="signature", tag=f"sha256-{SIG_HEX}.sig", artifact_class="other", **base)
    ]
    assert parse_with(GitHubFormat(), removed, GITHUB) == [
        ev("github", "ignored", reason="unsupported event", tag="v1", **base)
    ]


# JFrog (section 4.7).


def jfrog(event_type: str = "pushed", **data: Any) -> dict[str, Any]:
    return {
        "domain": "docker",
        "event_type": event_type,
        "jpd_origin": "https://user:pw@Arti.Example:8081/artifactory",
        "source": "jfrt@1/users/ci",
        "data": data,
    }


def test_jfrog_media_types_from_the_manifest_file() -> None:
    """list.manifest.json is an image whatever its flavour; a bare manifest.json without image_type is unknown."""
    listed = jfrog(image_name="acme/webapp", tag="v1", name="list.manifest.json", sha256="not hex")
    single = jfrog(image_name="acme/webapp", repo_key="local", tag="v1", name="manifest.json", sha256="F" * 64)
    base = {"time": RECEIVED, "host": "arti.example:8081", "tag": "v1", "actor": "jfrt@1/users/ci"}
    assert parse_with(JFrogFormat(), listed) == [
        ev("jfrog", "push", repository="acme/webapp", artifact_class="image", **base)
    ]
    assert parse_with(JFrogFormat(), single) == [ev("jfrog", "push", repository="local/acme/webapp", **base)]


def test_jfrog_push_without_data_is_untagged() -> None:
    """A Docker push naming no tag is not a build."""
    assert parse_with(JFrogFormat(), {"domain": "docker", "event_type": "pushed"}) == [
        ev("jfrog", "ignored", reason="untagged", time=RECEIVED)
    ]


# Artifact Registry via Pub/Sub (section 4.8).


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (pubsub("not base64!"), "Pub/Sub message data is not base64"),
        (pubsub("é"), "Pub/Sub message data is not base64"),
        (pubsub(b"not json"), "Pub/Sub message data is not a JSON object"),
        (pubsub(b"[1, 2]"), "Pub/Sub message data is not a JSON object"),
        (pubsub(b""), "Pub/Sub message data is not a JSON object"),
        (pubsub(b"\xff\xfe"), "Pub/Sub message data is not a JSON object"),
        ({"message": {"messageId": "1"}, "subscription": "s"}, "Pub/Sub message without data"),
        ({"message": {"data": 5}, "subscription": "s"}, "Pub/Sub message without data"),
        ({"message": "x", "subscription": "s"}, "Pub/Sub push without a message object"),
    ],
)
def test_gar_undecodable_data_is_bad_request(document: dict[str, Any], message: str) -> None:
    """A Pub/Sub push whose data cannot be read is refused with a fixed message."""
    with pytest.raises(BadRequest) as raised:
        parse_with(GARFormat(), document)
    assert raised.value.message == message


def test_gar_unwrapped_payload_with_metadata_headers() -> None:
    """With payload unwrapping the body is the data itself and the id and time come from headers."""
    headers = {
        "x-goog-pubsub-message-id": "777",
        "x-goog-pubsub-publish-time": "2026-01-05T07:00:01Z",
        "x-goog-pubsub-subscription-name": "projects/p/subscriptions/s",
    }
    document = {"action": "INSERT", "tag": "us-docker.pkg.dev/p/r/img:v9"}
    assert recognise(headers, document).name == "gar"
    assert parse_with(GARFormat(), document, headers) == [
        ev(
            "gar",
            "push",
            time=utc(2026, 1, 5, 7, 0, 1),
            host="us-docker.pkg.dev",
            repository="p/r/img",
            tag="v9",
            event_id="gar:777",
        )
    ]


def test_gar_snake_case_metadata_and_other_actions() -> None:
    """message_id and publish_time are read when the camel-case names are absent; unknown actions are ignored."""
    document = {
        "message": {
            "data": base64.b64encode(
                b'{"action": "UPDATE", "digest": "gcr.io/p/i@sha256:' + b"f" * 64 + b'"}'
            ).decode(),
            "message_id": "9",
            "publish_time": "2026-01-05T07:00:00Z",
        },
        "subscription": "s",
    }
    assert parse_with(GARFormat(), document) == [
        ev(
            "gar",
            "ignored",
            reason="unsupported event",
            time=utc(2026, 1, 5, 7),
            host="gcr.io",
            repository="p/i",
            digest="sha256:" + "f" * 64,
            event_id="gar:9",
        )
    ]


# ECR via EventBridge (section 4.9).


def ecr(detail: Any, **top: Any) -> dict[str, Any]:
    return {
        "id": "e-1",
        "detail-type": "ECR Image Action",
        "source": "aws.ecr",
        "account": "123456789012",
        "region": "us-east-1",
        "time": "2026-01-05T06:00:00Z",
        "detail": detail,
        **top,
    }


@pytest.mark.parametrize(
    ("detail", "action", "reason", "tag"),
    [
        ({"action-type": "DELETE", "result": "FAILURE", "image-tag": "v1"}, "ignored", "failure", "v1"),
        ({"action-type": "PUSH", "result": "SUCCESS", "image-tag": ""}, "ignored", "untagged", None),
        (
            {"action-type": "PUSH", "result": "SUCCESS", "image-tag": f"sha256-{SIG_HEX}"},
            "ignored",
            "signature",
            f"sha256-{SIG_HEX}",
        ),
        ({"action-type": "DELETE", "result": "SUCCESS"}, "delete", None, None),
        ({"action-type": "PULL", "result": "SUCCESS", "image-tag": "v1"}, "ignored", "unsupported event", "v1"),
        ("not an object", "ignored", "unsupported event", None),
    ],
)
def test_ecr_actions(detail: Any, action: str, reason: str | None, tag: str | None) -> None:
    """ECR: failures, untagged pushes, signatures and other actions are ignored; a delete needs no tag."""
    [event] = parse_with(ECRFormat(), ecr(detail))
    assert (event.action, event.reason, event.tag) == (action, reason, tag)
    assert event.host == "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert event.event_id == "ecr:e-1"


def test_ecr_without_account_region_or_time() -> None:
    """An odd account or region gives no host; a missing time is the receive time."""
    document = ecr(
        {"action-type": "PUSH", "result": "SUCCESS", "image-tag": "v1", "repository-name": "r"},
        account="12",
        region="Mars",
        time=None,
    )
    assert parse_with(ECRFormat(), document) == [
        ev("ecr", "push", time=RECEIVED, repository="r", tag="v1", event_id="ecr:e-1")
    ]


# Nexus (section 4.10).

NEXUS = {"x-nexus-webhook-id": "rm:repository:component", "x-nexus-webhook-delivery": "n-1"}


@pytest.mark.parametrize(
    ("action", "expected", "reason"),
    [("UPDATED", "push", None), ("DELETED", "delete", None), ("PURGED", "ignored", "unsupported event")],
)
def test_nexus_actions(action: str, expected: str, reason: str | None) -> None:
    """UPDATED builds like CREATED; DELETED is a delete; other actions are ignored."""
    document = {"action": action, "component": {"format": "docker", "name": "a/b", "version": "v1"}}
    assert parse_with(NexusFormat(), document, NEXUS) == [
        ev("nexus", expected, reason=reason, time=RECEIVED, repository="a/b", tag="v1", event_id="nexus:n-1")
    ]


def test_nexus_without_headers() -> None:
    """Without the webhook-id header nothing says what the body is; without the delivery header there is no id."""
    document = load("nexus_created.json")
    assert parse_with(NexusFormat(), document) == [
        ev("nexus", "ignored", reason="no event header", time=utc(2026, 1, 5, 5), actor="ci-bot/10.0.0.12")
    ]
    assert parse_with(NexusFormat(), document, {"x-nexus-webhook-id": "rm:repository:component"}) == [
        ev("nexus", "push", time=utc(2026, 1, 5, 5), repository="acme/webapp", tag="v1.4.2", actor="ci-bot/10.0.0.12")
    ]


# Aliyun (section 4.11).


@pytest.mark.parametrize(
    ("pushed_at", "expected"),
    [
        ("2026-01-05 12:00:00", RECEIVED),
        ("2026-01-05T12:00:00+08:00", utc(2026, 1, 5, 4)),
        ("2026-01-05 12:00:00Z", utc(2026, 1, 5, 12)),
        (1767600000, utc(2026, 1, 5, 8)),
        (None, RECEIVED),
        ("garbage", RECEIVED),
    ],
)
def test_aliyun_time_is_never_assumed_utc(pushed_at: Any, expected: datetime) -> None:
    """A zone-less pushed_at is not guessed at: the receive time stands in; a zoned one or epoch is read."""
    document = {"push_data": {"tag": "v1", "pushed_at": pushed_at}, "repository": {"region": "Bad Region!"}}
    assert parse_with(AliyunFormat(), document) == [ev("aliyun", "push", time=expected, tag="v1")]


# Pitfall 5.8 in Docker Hub and ACR.


def test_dockerhub_signature_tag_is_ignored() -> None:
    """A cosign signature pushed to Docker Hub is not built."""
    document = load("dockerhub_push.json")
    document["push_data"]["tag"] = f"sha256-{SIG_HEX}.sig"
    assert parse_with(DockerHubFormat(), document) == [
        ev(
            "dockerhub",
            "ignored",
            reason="signature",
            time=utc(2026, 1, 1),
            host="docker.io",
            repository="acme/webapp",
            tag=f"sha256-{SIG_HEX}.sig",
            artifact_class="other",
            actor="acme-ci",
        )
    ]


def test_acr_referrer_tag_is_ignored() -> None:
    """An OCI referrers fallback tag pushed to ACR is not built."""
    document = load("acr_push.json")
    document["target"]["tag"] = f"sha256-{SIG_HEX}"
    [event] = parse_with(ACRFormat(), document)
    assert (event.action, event.reason, event.tag, event.artifact_class) == (
        "ignored",
        "signature",
        f"sha256-{SIG_HEX}",
        "other",
    )


# Shared helpers (_common).


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("v1.4.2", ("v1.4.2", "")),
        ("_x", ("_x", "")),
        ("a" * 128, ("a" * 128, "")),
        ("", (None, "untagged")),
        (None, (None, "untagged")),
        (5, (None, "untagged")),
        ("sha256:" + "a" * 64, (None, "untagged")),
        ("a" * 129, (None, "invalid tag")),
        ("-x", (None, "invalid tag")),
        ("v1\n", (None, "invalid tag")),
        ("a/b", (None, "invalid tag")),
    ],
)
def test_tag_of(value: Any, expected: tuple[str | None, str]) -> None:
    """Only the distribution tag grammar is a tag; a digest where a tag belongs is no tag."""
    assert tag_of(value) == expected


@pytest.mark.parametrize(
    ("tag", "artifact_type", "expected"),
    [
        (f"sha256-{SIG_HEX}.sig", None, True),
        (f"sha256-{SIG_HEX}.att", None, True),
        (f"sha256-{SIG_HEX}.sbom", None, True),
        (f"sha256-{SIG_HEX}", None, True),
        (f"sha256-{SIG_HEX}.txt", None, False),
        ("sha256-abc.sig", None, False),
        ("v1", None, False),
        (None, "application/vnd.dev.cosign.artifact.sig.v1+json", True),
        (None, "application/vnd.in-toto+json", True),
        (None, "application/vnd.cncf.notary.signature", True),
        (None, "application/vnd.cyclonedx+json", True),
        (None, "application/vnd.dev.sigstore.bundle.v0.3+json", True),
        (None, "application/vnd.example.policy.v1+json", False),
        (None, None, False),
    ],
)
def test_is_signature(tag: str | None, artifact_type: str | None, expected: bool) -> None:
    """Cosign and referrer tags, and signature, attestation and SBOM types, are signatures."""
    assert is_signature(tag, artifact_type) is expected


@pytest.mark.parametrize(
    ("artifact_type", "expected"),
    [
        ("application/vnd.cncf.helm.config.v1+json", "chart"),
        ("application/vnd.oci.image.config.v1+json", "image"),
        ("application/vnd.wasm.config.v0+json", "other"),
        ("application/vnd.dev.cosign.artifact.sig.v1+json", "other"),
    ],
)
def test_artifact_class_by_artifact_type(artifact_type: str, expected: str) -> None:
    """A declared artifactType decides the class of an OCI manifest."""
    assert artifact_class("application/vnd.oci.image.manifest.v1+json", None, artifact_type) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ghcr.io/acme/webapp:v1", ("ghcr.io", "acme/webapp", "v1", None)),
        ("ghcr.io/acme/webapp:", ("ghcr.io", "acme/webapp", "", None)),
        ("Reg.Example:5000/a/b@sha256:" + "a" * 64, ("reg.example:5000", "a/b", None, "sha256:" + "a" * 64)),
        ("localhost/a:v1@sha256:" + "a" * 64, ("localhost", "a", "v1", "sha256:" + "a" * 64)),
        ("acme/webapp:v1", (None, "acme/webapp", "v1", None)),
        ("https://h.example/a/b", ("h.example", "a/b", None, None)),
        ("h.example", (None, "h.example", None, None)),
        ("", (None, None, None, None)),
        (None, (None, None, None, None)),
    ],
)
def test_split_reference(value: Any, expected: tuple[str | None, ...]) -> None:
    """Image references split as Docker splits them, host lower-cased with its port."""
    assert split_reference(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("https://Acme.JFrog.example:8443/x", "acme.jfrog.example:8443"),
        ("https://user:pw@h.example/", "h.example"),
        ("http://[::1]:8081", "[::1]:8081"),
        ("acme.jfrog.example", None),
        ("https://bad host/", None),
        (None, None),
    ],
)
def test_url_host(value: Any, expected: str | None) -> None:
    """The host of a URL, never its credentials."""
    assert url_host(value) == expected


def test_outcome_of_a_delete_keeps_no_digest_as_tag() -> None:
    """A delete stays a delete without a real tag; a push does not."""
    assert outcome("delete", "sha256:" + "a" * 64, "unknown") == ("delete", None, None, "unknown")
    assert outcome("push", "sha256:" + "a" * 64, "unknown") == ("ignored", "untagged", None, "unknown")


# Property tests: any input gives well-formed events or a BadRequest, never anything else.

BAD_REQUEST_MESSAGES = frozenset(
    {
        "Harbor artifact event without a list of resources",
        "Quay repo_push without a list of updated tags",
        "Distribution envelope without a list of events",
        "GitHub package event without a package",
        "Pub/Sub push without a message object",
        "Pub/Sub message without data",
        "Pub/Sub message data is not base64",
        "Pub/Sub message data is not a JSON object",
        "ACR event without an action",
    }
)
ACTIONS = frozenset({"push", "delete", "quarantine", "ping", "ignored"})
CLASSES = frozenset({"image", "chart", "other", "unknown"})

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=12,
)
tags = st.sampled_from(
    ["v1.4.2", "", "latest", "sha256:" + "a" * 64, f"sha256-{SIG_HEX}.sig", f"sha256-{SIG_HEX}", "bad tag", "x" * 200]
) | st.text(max_size=12)
digests = st.sampled_from(["sha256:" + "b" * 64, "sha256:", "md5:zz", "b" * 64]) | st.text(max_size=12)
times = (
    st.sampled_from(
        [
            "2026-01-05T08:30:00.000000001Z",
            "2026-01-05T05:00:00.000+0000",
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2026-01-05 12:00:00",
            1767600000,
            1.5e9,
            10**30,
            -(10**12),
            True,
        ]
    )
    | json_values
)
media_types = (
    st.sampled_from(
        [
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.cncf.helm.config.v1+json",
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            "application/octet-stream",
        ]
    )
    | json_values
)
references = st.sampled_from(
    ["ghcr.io/acme/webapp:v1", "ghcr.io/acme/webapp:", "h:1/a@sha256:" + "a" * 64, "https://x/y", "a b/c:d", ":", "@"]
) | st.text(max_size=20)


def shape(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """
    Objects shaped around ``fields``: mostly with every field, well typed, so
    that deep paths are reached; sometimes with any subset of them, each
    allowed any JSON value (wrong shapes included).
    """
    strict = st.fixed_dictionaries(fields)
    loose = st.fixed_dictionaries({}, optional={name: strategy | json_values for name, strategy in fields.items()})
    return st.one_of(strict, strict, strict, loose)


def header_sets(*names: str, values: tuple[str, ...] = ()) -> st.SearchStrategy[dict[str, str]]:
    """Headers among ``names``: mostly all of them with telling values, sometimes any subset with any text."""
    texts = st.text(max_size=12)
    telling = st.sampled_from(values) if values else texts
    loose = st.dictionaries(st.sampled_from(names), telling | texts, max_size=len(names))
    return st.one_of(st.fixed_dictionaries(dict.fromkeys(names, telling)), loose)


harbor_resource = shape(tag=tags, digest=digests, resource_url=references)
harbor_data = shape(
    resources=st.lists(harbor_resource, max_size=3),
    repository=shape(repo_full_name=st.text(max_size=10), namespace=st.text(max_size=5), name=st.text(max_size=5)),
)
harbor_kinds = st.sampled_from(
    [
        "PUSH_ARTIFACT",
        "DELETE_ARTIFACT",
        "PULL_ARTIFACT",
        "pushImage",
        "harbor.artifact.pushed",
        "harbor.artifact.deleted",
        "harbor.scan.failed",
        "SCANNING_FAILED",
        "x",
    ]
)
FUZZ: dict[str, tuple[st.SearchStrategy[dict[str, Any]], st.SearchStrategy[dict[str, str]]]] = {
    "harbor": (
        shape(
            type=harbor_kinds,
            occur_at=times,
            time=times,
            id=st.text(max_size=8),
            operator=st.text(max_size=8),
            specversion=st.just("1.0"),
            event_data=harbor_data,
            data=harbor_data,
        ),
        header_sets("content-type", values=("application/cloudevents+json", "application/json")),
    ),
    "quay": (
        shape(
            docker_url=references,
            repository=st.text(max_size=10),
            pruned_image_count=st.integers(),
            pushed_image_count=st.integers(),
            updated_tags=st.lists(tags, max_size=3) | st.dictionaries(tags, st.text(max_size=5), max_size=3),
        ),
        st.just({}),
    ),
    "distribution": (
        shape(
            events=st.lists(
                shape(
                    id=st.text(max_size=8),
                    timestamp=times,
                    action=st.sampled_from(["push", "pull", "mount", "delete", "x"]),
                    target=st.builds(
                        lambda core, extras: {**core, **extras},
                        shape(
                            mediaType=media_types,
                            tag=tags,
                            digest=digests,
                            repository=st.text(max_size=10),
                            url=references,
                        ),
                        # The 3.x descriptor extras, present or not.
                        st.fixed_dictionaries(
                            {},
                            optional={
                                "artifactType": media_types,
                                "annotations": shape(**{"vnd.docker.reference.type": st.just("attestation-manifest")}),
                                "platform": json_values,
                            },
                        ),
                    ),
                    request=shape(host=references),
                    actor=shape(name=st.text(max_size=8)),
                ),
                max_size=4,
            )
        ),
        header_sets("content-type", values=("application/vnd.docker.distribution.events.v2+json",)),
    ),
    "github": (
        shape(
            action=st.sampled_from(["published", "updated", "removed"]),
            sender=shape(login=st.text(max_size=8)),
            package=shape(
                namespace=st.text(max_size=5),
                name=st.text(max_size=5),
                package_type=st.sampled_from(["CONTAINER", "docker", "npm"]),
                package_version=shape(
                    version=digests,
                    created_at=times,
                    updated_at=times,
                    package_url=references,
                    container_metadata=shape(
                        tag=shape(name=tags, digest=digests),
                        manifest=shape(media_type=media_types, config=shape(media_type=media_types)),
                    ),
                ),
            ),
            registry_package=json_values,
        ),
        header_sets("x-github-event", "x-github-delivery", values=("package", "registry_package", "ping", "issues")),
    ),
    "jfrog": (
        shape(
            domain=st.sampled_from(["docker", "artifact"]),
            event_type=st.sampled_from(["pushed", "deleted", "promoted"]),
            jpd_origin=references,
            source=st.text(max_size=8),
            data=shape(
                image_name=st.text(max_size=8),
                repo_key=st.text(max_size=5),
                tag=tags,
                sha256=st.sampled_from(["a" * 64, "zz"]),
                name=st.sampled_from(["manifest.json", "list.manifest.json"]),
                image_type=st.sampled_from(["docker", "oci", "OCI"]),
            ),
        ),
        header_sets("x-jfrog-event-auth"),
    ),
    "gar": (
        shape(
            subscription=st.text(max_size=5),
            message=shape(
                messageId=st.text(max_size=5),
                publishTime=times,
                data=st.builds(
                    lambda value: base64.b64encode(json.dumps(value).encode()).decode(),
                    shape(action=st.sampled_from(["INSERT", "DELETE"]), tag=references, digest=references),
                )
                | st.text(alphabet=string.ascii_letters + "=+/", max_size=12),
            ),
            action=st.sampled_from(["INSERT", "DELETE"]),
            tag=references,
            digest=references,
        ),
        header_sets("x-goog-pubsub-message-id", "x-goog-pubsub-publish-time", values=("2026-01-05T07:00:00Z",)),
    ),
    "ecr": (
        shape(
            id=st.text(max_size=8),
            time=times,
            account=st.sampled_from(["123456789012", "1"]),
            region=st.sampled_from(["eu-west-1", "cn-north-1", "Mars"]),
            **{
                "detail-type": st.sampled_from(["ECR Image Action", "ECR Image Scan"]),
                "detail": shape(
                    **{
                        "action-type": st.sampled_from(["PUSH", "DELETE"]),
                        "result": st.sampled_from(["SUCCESS", "FAILURE"]),
                        "image-tag": tags,
                        "image-digest": digests,
                        "repository-name": st.text(max_size=8),
                        "manifest-media-type": media_types,
                        "artifact-media-type": media_types,
                    }
                ),
            },
        ),
        st.just({}),
    ),
    "nexus": (
        shape(
            timestamp=times,
            initiator=st.text(max_size=8),
            action=st.sampled_from(["CREATED", "UPDATED", "DELETED"]),
            component=shape(format=st.sampled_from(["docker", "maven2"]), name=st.text(max_size=8), version=tags),
        ),
        header_sets(
            "x-nexus-webhook-id", "x-nexus-webhook-delivery", values=("rm:repository:component", "rm:repository:asset")
        ),
    ),
    "aliyun": (
        shape(
            push_data=shape(tag=tags, digest=digests, pushed_at=times),
            repository=shape(
                region=st.sampled_from(["cn-hangzhou", "Bad Region"]),
                repo_full_name=st.text(max_size=8),
                namespace=st.text(max_size=5),
                name=st.text(max_size=5),
            ),
        ),
        st.just({}),
    ),
}
BY_NAME = {fmt.name: fmt for fmt in FORMATS}


def check_parse(fmt: IPayloadFormat, document: dict[str, Any], headers: dict[str, str]) -> None:
    """The invariants every parser keeps on any input."""
    try:
        events = list(fmt.parse(deliver(b"{}", headers), document))
    except BadRequest as error:
        assert error.message in BAD_REQUEST_MESSAGES
        return
    assert events
    for event in events:
        assert isinstance(event, RegistryEvent)
        assert event.registry == fmt.name
        assert event.time.tzinfo is not None
        assert event.time.utcoffset() == timedelta(0)
        assert event.tag is None or (event.tag != "" and not event.tag.startswith("sha256:"))
        assert event.action in ACTIONS
        assert event.artifact_class in CLASSES
        assert (event.reason is not None) == (event.action == "ignored")
        # generic reports a push with nothing known, by design.
        assert event.action != "push" or event.tag is not None or fmt.name == "generic"
        assert event.host is None or event.host == event.host.lower()
        if event.event_id is not None:
            assert event.event_id.startswith(fmt.name + ":")
            assert event.event_id_source == "sender"
        else:
            assert event.event_id_source == "derived"


def fuzz_test(name: str) -> Any:
    documents, headers = FUZZ[name]

    @given(documents, headers)
    def test(document: dict[str, Any], header_values: dict[str, str]) -> None:
        check_parse(BY_NAME[name], document, header_values)

    test.__doc__ = f"{name}: any document shaped around its keys parses to valid events or a BadRequest."
    return test


test_fuzz_harbor = fuzz_test("harbor")
test_fuzz_quay = fuzz_test("quay")
test_fuzz_distribution = fuzz_test("distribution")
test_fuzz_github = fuzz_test("github")
test_fuzz_jfrog = fuzz_test("jfrog")
test_fuzz_gar = fuzz_test("gar")
test_fuzz_ecr = fuzz_test("ecr")
test_fuzz_nexus = fuzz_test("nexus")
test_fuzz_aliyun = fuzz_test("aliyun")


any_document = st.one_of([documents for documents, _ in FUZZ.values()])
any_headers = st.one_of([headers for _, headers in FUZZ.values()])


@given(any_document, any_headers)
def test_fuzz_recognised_parsers(document: dict[str, Any], headers: dict[str, str]) -> None:
    """Whatever format recognises a document, its parser keeps the invariants."""
    check_parse(recognise(headers, document), document, headers)


@given(any_document, any_headers, st.sampled_from(sorted(BY_NAME)))
def test_fuzz_any_parser_on_any_document(document: dict[str, Any], headers: dict[str, str], name: str) -> None:
    """?registry= can hand any body to any format: no parser fails on another's shape."""
    check_parse(BY_NAME[name], document, headers)
