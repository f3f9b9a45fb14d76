"""
The payload formats brigade-cr understands, in recognition order.

Order matters: the most specific marks are tested first (registries.md
section 2), and ``generic`` always matches last.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..interfaces import IPayloadFormat
from .acr import ACRFormat
from .dockerhub import DockerHubFormat
from .generic import GenericFormat

__all__ = ["FORMATS", "ACRFormat", "DockerHubFormat", "GenericFormat", "recognise"]

FORMATS: tuple[IPayloadFormat, ...] = (ACRFormat(), DockerHubFormat(), GenericFormat())


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
