"""Small pure helpers shared by the payload formats."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import attrs

from brigade_cr.core.grammar import is_repository, is_tag
from brigade_cr.core.timestamps import parse_rfc3339
from brigade_cr.core.values import CHART, IGNORED, IMAGE, OTHER, PUSH, UNKNOWN, RegistryEvent

INVALID_TAG = "invalid tag"
INVALID_REPOSITORY = "invalid repository"

_IMAGE_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.container.image.v1+json",
        "application/vnd.oci.image.config.v1+json",
    }
)
_CHART_TYPES = frozenset(
    {
        "application/vnd.cncf.helm.config.v1+json",
        "application/vnd.cncf.helm.chart.content.v1.tar+gzip",
        "application/vnd.acr.helm.chart",
    }
)
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_LAYER_MARKS = ("rootfs.diff.tar", "image.layer.v1", "application/octet-stream")
# Manifest and index types: the only pushes that can name something pullable.
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    }
)
# Marks of signature, attestation and SBOM artifact types (cosign, sigstore,
# in-toto, Notation, SPDX, CycloneDX, Syft): class ``other``, never built
# (docs/registries.md section 5.8).
_SIGNATURE_TYPE_MARKS = (
    "cosign",
    "sigstore",
    "in-toto",
    "intoto",
    "notary",
    "signature",
    "attestation",
    "spdx",
    "cyclonedx",
    "syft",
    "sbom",
)
# Cosign's tags (sha256-<hex>.sig, .att, .sbom) and the OCI referrers
# fallback tag (sha256-<hex>) name a signature of another manifest.
_SIGNATURE_TAG = re.compile(r"^sha256-[0-9a-f]{64}(?:\.(?:sig|att|sbom))?$")
# The OCI digest grammar: algorithm ":" encoded.
_DIGEST = re.compile(r"^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
# A registry host: a DNS name or IPv4 address, or a bracketed IPv6 address,
# with an optional port.
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


def artifact_class(media_type: str | None, config_type: str | None = None, artifact_type: str | None = None) -> str:
    """
    The artifact class for a manifest media type and, where known, its config
    media type and its OCI ``artifactType`` (docs/registries.md section 3).

    A manifest that declares an ``artifactType`` is an artifact, not an
    image: it is a chart for Helm's types, ``other`` for anything else.
    """
    if artifact_type:
        if artifact_type in _CHART_TYPES:
            return CHART
        if artifact_type in _IMAGE_TYPES:
            return IMAGE
        return OTHER
    for candidate in (config_type, media_type):
        if candidate in _CHART_TYPES:
            return CHART
    if media_type in _IMAGE_TYPES or config_type in _IMAGE_TYPES:
        return IMAGE
    if media_type == _OCI_MANIFEST and config_type:
        return OTHER
    return UNKNOWN


def is_layer(media_type: str | None) -> bool:
    """True for blob and layer media types, which never make a build."""
    return bool(media_type) and any(mark in media_type for mark in _LAYER_MARKS)  # type: ignore[operator]


def is_manifest(media_type: str | None) -> bool:
    """True for manifest and index media types."""
    return media_type in MANIFEST_TYPES


def is_signature(tag: Any = None, artifact_type: Any = None) -> bool:
    """
    True when a tag or an ``artifactType`` marks a signature, attestation or
    SBOM rather than something to deploy (docs/registries.md section 5.8).
    """
    if isinstance(tag, str) and _SIGNATURE_TAG.fullmatch(tag):
        return True
    if isinstance(artifact_type, str):
        lowered = artifact_type.lower()
        return any(mark in lowered for mark in _SIGNATURE_TYPE_MARKS)
    return False


def tag_of(value: Any) -> tuple[str | None, str]:
    """
    ``(tag, "")`` for a real tag; ``(None, reason)`` otherwise, the reason
    being ``untagged`` (absent, empty, or a digest where a tag belongs, as
    Harbor sends for digest-only pushes) or ``invalid tag``.
    """
    if not isinstance(value, str) or not value or value.startswith("sha256:"):
        return None, "untagged"
    if not is_tag(value):
        return None, INVALID_TAG
    return value, ""


def digest_of(value: Any) -> str | None:
    """``value`` when it is a digest (``algorithm:hex``), else None."""
    return value if isinstance(value, str) and _DIGEST.fullmatch(value) else None


def host_of(value: Any) -> str | None:
    """``value`` lower-cased when it is a registry host (port kept), else None."""
    if isinstance(value, str) and _HOST.fullmatch(value):
        return value.lower()
    return None


def url_host(value: Any) -> str | None:
    """The host (lower-case, port kept) of an absolute URL, or None."""
    if not isinstance(value, str) or "://" not in value:
        return None
    authority = value.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    # Credentials in a URL are never part of the host.
    return host_of(authority.rpartition("@")[2])


def split_reference(value: Any) -> tuple[str | None, str | None, str | None, str | None]:
    """
    ``(host, repository, tag, digest)`` from an image reference such as
    ``host[:port]/path[:tag][@digest]``; the tag is returned as written (it
    may be ``""`` for a bare trailing ``:``, so check it with ``tag_of``).
    The first component is a host only when it looks like one (a dot, a
    port or ``localhost``), as Docker decides. Missing parts are None.
    """
    if not isinstance(value, str):
        return None, None, None, None
    rest = value.strip()
    if "://" in rest:
        rest = rest.split("://", 1)[1]
    digest = None
    if "@" in rest:
        rest, _, after = rest.rpartition("@")
        digest = digest_of(after)
    tag = None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        rest, tag = rest[:colon], rest[colon + 1 :]
    host = None
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        host = host_of(first)
        rest = remainder
    return host, rest.strip("/") or None, tag, digest


def outcome(
    action: str, tag_value: Any, klass: str, artifact_type: Any = None
) -> tuple[str, str | None, str | None, str]:
    """
    ``(action, reason, tag, artifact_class)`` for an event about
    ``tag_value``: anything about a signature, attestation or SBOM is ignored
    as class ``other`` (reason ``signature``), and a push needs a real tag
    (else reason ``untagged`` or ``invalid tag``). Deletes keep no tag when
    the value is a digest or absent: manifest deletes name only a digest. A
    tag outside the grammar is never passed on: whatever the action, the
    event is ignored as ``invalid tag``.
    """
    tag, reason = tag_of(tag_value)
    if is_signature(tag_value, artifact_type):
        return IGNORED, "signature", tag, OTHER
    if reason == INVALID_TAG:
        return IGNORED, reason, None, klass
    if action == PUSH and tag is None:
        return IGNORED, reason, None, klass
    return action, None, tag, klass


def _keep_to_grammar(fields: dict[str, Any]) -> dict[str, Any]:
    # A value outside the grammar is dropped, and the event ignored with the
    # reason: a repository first (nothing can be built without one), then a tag.
    repository, tag = fields.get("repository"), fields.get("tag")
    if repository is not None and not (isinstance(repository, str) and is_repository(repository)):
        fields.update(repository=None, action=IGNORED, reason=INVALID_REPOSITORY)
    if tag is not None and not (isinstance(tag, str) and is_tag(tag)):
        fields["tag"] = None
        if fields.get("reason") != INVALID_REPOSITORY:
            fields.update(action=IGNORED, reason=INVALID_TAG)
    return fields


def make_event(**fields: Any) -> RegistryEvent:
    """
    A ``RegistryEvent`` of ``fields``, the way every parser makes one: a
    ``repository`` outside the OCI name grammar or a ``tag`` outside the
    tag grammar is dropped, and the event is ignored with the reason
    ``invalid repository`` or ``invalid tag``. Never raises for those two
    fields (``RegistryEvent`` itself refuses them).
    """
    return RegistryEvent(**_keep_to_grammar(fields))


def evolve_event(event: RegistryEvent, **changes: Any) -> RegistryEvent:
    """
    ``event`` with ``changes``, kept to the grammar as ``make_event`` does.
    An event already ignored for an invalid repository or tag stays ignored
    for that reason, whatever ``changes`` say of its action and reason.
    """
    if event.reason in (INVALID_REPOSITORY, INVALID_TAG):
        changes.pop("action", None)
        changes.pop("reason", None)
    return make_event(**{**attrs.asdict(event, recurse=False), **changes})


def text(document: Mapping[str, Any], *path: str) -> str | None:
    """
    The string at ``path`` inside nested objects, or None when any step is
    missing or is not of the expected type. Never raises on odd shapes.
    """
    value: Any = document
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value if isinstance(value, str) else None


def obj(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The object under ``key``, or an empty mapping for any other shape."""
    value = document.get(key)
    return value if isinstance(value, Mapping) else {}


def parse_time(value: Any, fallback: datetime, naive_is_utc: bool = True) -> datetime:
    """
    A UTC datetime from Unix seconds (int or float) or an RFC 3339 string
    (``core.timestamps.parse_rfc3339``; a string with no zone is UTC unless
    ``naive_is_utc`` is False); ``fallback`` (the receive time) when the
    value is absent or unreadable (docs/registries.md section 5.11).
    """
    if isinstance(value, bool):
        return fallback
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return fallback
    if isinstance(value, str):
        parsed = parse_rfc3339(value, naive_is_utc=naive_is_utc)
        return fallback if parsed is None else parsed
    return fallback
