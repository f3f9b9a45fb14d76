"""
The payload formats brigade-cr understands, in recognition order.

Order matters: the most specific marks are tested first, and ``generic``
always matches last. ``FORMATS`` is the table of docs/registries.md section
2, test by test:

1. GitHub (``X-GitHub-Event``), 2. Nexus (``X-Nexus-Webhook-Id``),
3. JFrog, 4. Distribution (before ACR: its events have ACR's inner shape),
5. Harbor, 6. ECR, 7. Pub/Sub (GAR), 8. ACR, 9. Quay, 10. Aliyun (before
Docker Hub: both have ``push_data``), 11. Docker Hub, 12. generic.

Harbor is one format with two shapes, CloudEvents and Default, both tested
at position 5. Testing the Default shape ahead of ECR and Pub/Sub changes
nothing: an ECR event needs ``source == "aws.ecr"`` and ``detail-type``, a
Pub/Sub push ``message``/``subscription`` or ``x-goog-pubsub-*`` headers,
and Harbor's Default body has none of these.
CloudEvents that are not Harbor's are out of scope and fall through to
``generic``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.registries.acr import ACRFormat
from brigade_cr.registries.aliyun import AliyunFormat
from brigade_cr.registries.distribution import DistributionFormat
from brigade_cr.registries.dockerhub import DockerHubFormat
from brigade_cr.registries.ecr import ECRFormat
from brigade_cr.registries.gar import GARFormat
from brigade_cr.registries.generic import GenericFormat
from brigade_cr.registries.github import GitHubFormat
from brigade_cr.registries.harbor import HarborFormat
from brigade_cr.registries.jfrog import JFrogFormat
from brigade_cr.registries.nexus import NexusFormat
from brigade_cr.registries.quay import QuayFormat

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
