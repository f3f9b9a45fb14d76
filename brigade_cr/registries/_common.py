"""Small pure helpers shared by the payload formats."""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any, Mapping

from ..values import CHART, IMAGE, OTHER, UNKNOWN

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

_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?"
    r"(Z|z|[+-]\d\d:?\d\d)?$"
)


def artifact_class(media_type: str | None, config_type: str | None = None) -> str:
    """
    The artifact class for a manifest media type and, where known, its config
    media type (registries.md section 3).
    """
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


def parse_time(value: Any, fallback: datetime) -> datetime:
    """
    A UTC datetime from Unix seconds (int or float) or an RFC 3339 string
    with up to nanoseconds; ``fallback`` (the receive time) when the value is
    absent or unreadable.
    """
    if isinstance(value, bool):
        return fallback
    if isinstance(value, (int, float)):
        try:
            return datetime.fromtimestamp(float(value), tz=timezone.utc)
        except (OverflowError, OSError, ValueError):
            return fallback
    if isinstance(value, str):
        match = _RFC3339.match(value.strip())
        if not match:
            return fallback
        year, month, day, hour, minute, second, fraction, zone = match.groups()
        micro = int((fraction or "0")[:6].ljust(6, "0"))
        iso = f"{year}-{month}-{day}T{hour}:{minute}:{second}.{micro:06d}"
        if zone in (None, "Z", "z"):
            iso += "+00:00"
        else:
            iso += zone if ":" in zone else zone[:3] + ":" + zone[3:]
        try:
            return datetime.fromisoformat(iso).astimezone(timezone.utc)
        except ValueError:
            return fallback
    return fallback
