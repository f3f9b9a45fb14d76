"""
The Brigade v1 wire contract, as pure functions.

Project IDs, reading a project Secret, rendering a build Secret and ULIDs are
all here, with no I/O, so that byte-for-byte compatibility with Brigade v1 is
tested in one place.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any, Mapping

from brigade_cr.core.errors import ProjectNotFound
from brigade_cr.core.values import Build, Project

PROJECT_TYPE = "brigade.sh/project"
BUILD_TYPE = "brigade.sh/build"

# Crockford's base32, lower-cased: secret and pod names must be DNS-1123.
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
ULID_LENGTH = 26

# The build Secret's data keys, in the order the Go gateways write them.
BUILD_DATA_KEYS = (
    "build_id",
    "build_name",
    "event_type",
    "event_provider",
    "project_id",
    "commit_id",
    "commit_ref",
    "clone_url",
    "short_title",
    "long_title",
    "log_level",
    "payload",
    "script",
    "config",
)


def project_id(name: str) -> str:
    """
    The Brigade project ID for a project name or ID.

    A name that already starts with ``brigade-`` is an ID; any other name is
    hashed exactly as ``brig`` and the Go gateways hash it (no normalisation).
    """
    if name.startswith("brigade-"):
        return name
    return "brigade-" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:54]


def encode_ulid(milliseconds: int, randomness: bytes) -> str:
    """
    A lowercase ULID from a 48-bit millisecond timestamp and 80 random bits.

    Raises ``ValueError`` for a timestamp outside 48 bits or randomness that
    is not exactly 10 bytes.
    """
    if not 0 <= milliseconds < 1 << 48:
        raise ValueError("ULID timestamp out of range")
    if len(randomness) != 10:
        raise ValueError("ULID randomness must be 10 bytes")
    value = (milliseconds << 80) | int.from_bytes(randomness, "big")
    chars = []
    for _ in range(ULID_LENGTH):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def decode_ulid_time(ulid: str) -> int:
    """The millisecond timestamp of a lowercase ULID."""
    value = 0
    for char in ulid:
        value = value * 32 + _CROCKFORD.index(char)
    return value >> 80


def is_ulid(text: str) -> bool:
    """True when ``text`` is a lowercase, 26-character, in-range ULID."""
    return len(text) == ULID_LENGTH and all(char in _CROCKFORD for char in text) and text[0] in "01234567"


def secret_data(secret: Mapping[str, Any]) -> dict[str, bytes]:
    """
    The decoded ``data`` of a Secret, with ``stringData`` (as a manifest may
    carry) taking precedence, as the API server merges it.

    Raises ``ValueError`` for data that is not base64.
    """
    decoded: dict[str, bytes] = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            decoded[key] = base64.b64decode(value or "", validate=True)
        except (binascii.Error, TypeError) as e:
            raise ValueError(f"data key {key!r} is not base64") from e
    for key, value in (secret.get("stringData") or {}).items():
        decoded[key] = str(value).encode("utf-8")
    return decoded


def project_from_secret(secret: Mapping[str, Any]) -> Project:
    """
    Read a project Secret.

    Raises ``ProjectNotFound`` unless it is a ``brigade.sh/project`` Secret
    with readable data: any other ``brigade-*`` Secret (a build, say) is not a
    project.
    """
    if secret.get("type") != PROJECT_TYPE:
        raise ProjectNotFound("not a brigade.sh/project secret")
    metadata = secret.get("metadata") or {}
    try:
        data = secret_data(secret)
    except ValueError as e:
        raise ProjectNotFound("unreadable project secret") from e
    annotations = metadata.get("annotations") or {}
    name = metadata.get("name") or ""

    def text(key: str) -> str:
        return data.get(key, b"").decode("utf-8", "replace")

    secret_value = data.get("crGatewaySecret") or None
    return Project(
        id=name,
        name=annotations.get("projectName") or name,
        repository=text("repository"),
        clone_url=text("cloneURL"),
        cr_gateway_secret=secret_value,
    )


def build_data(build: Build) -> dict[str, bytes]:
    """Every data key of the build Secret, unencoded, empty where unset."""
    values = {
        "build_id": build.name,
        "build_name": build.name,
        "event_type": build.event_type,
        "event_provider": build.event_provider,
        "project_id": build.project_id,
        "commit_id": build.commit_id,
        "commit_ref": build.commit_ref,
        "clone_url": build.clone_url,
        "short_title": build.short_title,
        "long_title": build.long_title,
        "log_level": build.log_level,
        "script": build.script,
        "config": build.config,
    }
    data = {key: values[key].encode("utf-8") for key in values}
    data["payload"] = build.payload
    return {key: data[key] for key in BUILD_DATA_KEYS}


def build_secret(build: Build, namespace: str) -> dict[str, Any]:
    """
    The build Secret exactly as Brigade v1's controller and ``brig`` expect
    it (docs/brigade-v1.md section 2). There is no ``status`` label: the
    controller skips secrets labelled ``status=accepted``.
    """
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": BUILD_TYPE,
        "metadata": {
            "name": build.name,
            "namespace": namespace,
            "labels": {
                "heritage": "brigade",
                "component": "build",
                "build": build.ulid,
                "project": build.project_id,
            },
        },
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in build_data(build).items()},
    }


# What makes an existing Secret the same build: the event it stands for.
# The payload and titles are left out on purpose: a build's name is derived
# from the event's identity, and a sender may re-deliver the same event with
# different bytes (Pub/Sub adds a delivery attempt count, for one).
_IDENTITY_KEYS = ("build_id", "build_name", "event_type", "event_provider", "project_id", "commit_ref")


def same_build(secret: Mapping[str, Any], build: Build) -> bool:
    """
    True when an existing Secret is this build: a ``brigade.sh/build`` Secret
    with the same labels and the same build ID, event type, provider,
    project and commit. Finding it is a duplicate submission, not a conflict.
    """
    if secret.get("type") != BUILD_TYPE:
        return False
    labels = (secret.get("metadata") or {}).get("labels") or {}
    expected = build_secret(build, "")["metadata"]["labels"]
    if any(labels.get(key) != value for key, value in expected.items()):
        return False
    try:
        existing = secret_data(secret)
    except ValueError:
        return False
    wanted = build_data(build)
    return all(existing.get(key) == wanted[key] for key in _IDENTITY_KEYS)
