"""
The payload formats brigade-cr understands, in recognition order.

Order matters: the most specific marks are tested first (registries.md
section 2), and ``generic`` always matches last:

1. GitHub (``X-GitHub-Event``), 2. Nexus (``X-Nexus-Webhook-Id``),
3. JFrog, 4. Distribution (before ACR: its events have ACR's inner shape),
5. Harbor, 6. ECR, 7. Pub/Sub (GAR), 9. ACR, 10. Quay, 11. Aliyun (before
Docker Hub: both have ``push_data``), 12. Docker Hub, then generic.

Harbor is one format with two recognition tests, CloudEvents (section 2,
test 5) and Default (test 8); both run at position 5. Moving test 8 ahead of
ECR and Pub/Sub changes nothing: an ECR event needs ``source == "aws.ecr"``
and ``detail-type``, a Pub/Sub push ``message``/``subscription`` or
``x-goog-pubsub-*`` headers, and Harbor's Default body has none of these.
CloudEvents that are not Harbor's are out of scope and fall through to
``generic``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..interfaces import IPayloadFormat
from .acr import ACRFormat
from .aliyun import AliyunFormat
from .distribution import DistributionFormat
from .dockerhub import DockerHubFormat
from .ecr import ECRFormat
from .gar import GARFormat
from .generic import GenericFormat
from .github import GitHubFormat
from .harbor import HarborFormat
from .jfrog import JFrogFormat
from .nexus import NexusFormat
from .quay import QuayFormat

__all__ = [
    "FORMATS",
    "ACRFormat",
    "AliyunFormat",
    "DistributionFormat",
    "DockerHubFormat",
    "ECRFormat",
    "GARFormat",
    "GenericFormat",
    "GitHubFormat",
    "HarborFormat",
    "JFrogFormat",
    "NexusFormat",
    "QuayFormat",
    "recognise",
]

FORMATS: tuple[IPayloadFormat, ...] = (
    GitHubFormat(),
    NexusFormat(),
    JFrogFormat(),
    DistributionFormat(),
    HarborFormat(),
    ECRFormat(),
    GARFormat(),
    ACRFormat(),
    QuayFormat(),
    AliyunFormat(),
    DockerHubFormat(),
    GenericFormat(),
)


def recognise(
    headers: Mapping[str, str],
    document: Mapping[str, Any],
    formats: Sequence[IPayloadFormat] = FORMATS,
) -> IPayloadFormat:
    """The first format in ``formats`` that recognises the delivery."""
    for candidate in formats:
        if candidate.recognise(headers, document):
            return candidate
    raise LookupError("no format recognised the delivery; the list must end with generic")
