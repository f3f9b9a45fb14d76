"""
Deterministic build IDs: one event, one build (promise P3,
docs/guarantees.md; docs/registries.md section 6.2).

A build's ULID is derived from the event, so a re-delivery (a sender's
retry, a geo-replica's copy, a manual redelivery) gets the same build Secret
name, and the Kubernetes API itself refuses the second one with 409
AlreadyExists, across restarts and replicas.

- The ULID's 48-bit timestamp is the event's own time (from the payload), or
  for senders that give none the start of the receive-time bucket.
- Its 80 random bits are the first 10 bytes of a SHA-256 over the project ID,
  the commit the URL names, and the event's identity:
  - **sender ids** where every buildable event has one (ACR ``id``,
    Distribution event ids, ``X-GitHub-Delivery``, CloudEvents ``id``,
    Pub/Sub ``messageId``, EventBridge ``id``, Nexus delivery), with the tag;
  - else a **derived key** from what the sender says about each event:
    registry, action, host, repository, tag, digest and the event's time
    (Docker Hub: repository, tag and ``pushed_at``; Harbor: type,
    repository, digest, tag, ``occur_at``; ...);
  - for ``generic`` deliveries, which say nothing, a **synthetic key**: the
    SHA-256 of the body within a receive-time bucket of
    ``BUCKET_SECONDS``. The same body re-sent within the bucket is a
    duplicate; after it, a new build.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone
from typing import Sequence

import attrs

from brigade_cr.core.contract import encode_ulid
from brigade_cr.core.values import Delivery, RegistryEvent

BUCKET_SECONDS = 60
_SEPARATOR = "\x1f"  # cannot occur in JSON-decoded text we put in a key unescaped
_MAX_MS = (1 << 48) - 1


@attrs.frozen
class Identity:
    """
    What makes a delivery the same event as another: ``key`` (compared, never
    shown), how it was found (``sender``, ``derived``, ``synthetic``), and the
    time the build ID's timestamp comes from.
    """

    key: str = attrs.field(repr=False)
    source: str
    time: datetime


def _bucket(moment: datetime) -> datetime:
    seconds = int(moment.timestamp()) // BUCKET_SECONDS * BUCKET_SECONDS
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _part(value: str | None) -> str:
    # Escape the separator so that no two different field lists join alike.
    return "" if value is None else value.replace("\\", "\\\\").replace(_SEPARATOR, "\\x1f")


def identity_of(delivery: Delivery, events: Sequence[RegistryEvent]) -> Identity:
    """The identity of a delivery whose buildable events are ``events`` (not empty)."""
    first = events[0]
    # A parser falls back to the receive time when the sender gives none;
    # a retry is received later, so use the bucket instead.
    event_time = first.time if first.time != delivery.received else _bucket(delivery.received)
    head = [_part(delivery.commit)]
    if all(event.event_id and event.event_id_source == "sender" for event in events):
        parts = sorted({_part(event.event_id) + "#" + _part(event.tag) for event in events})
        return Identity(_SEPARATOR.join(["sender", *head, *parts]), "sender", event_time)
    if first.registry == "generic":
        digest = hashlib.sha256(delivery.body).hexdigest()
        bucket = _bucket(delivery.received)
        key = _SEPARATOR.join(["synthetic", *head, digest, bucket.isoformat()])
        return Identity(key, "synthetic", bucket)
    parts = sorted(
        _SEPARATOR.join(
            _part(value)
            for value in (
                event.registry,
                event.action,
                event.host,
                event.repository,
                event.tag,
                event.digest,
                (event.time if event.time != delivery.received else _bucket(delivery.received)).isoformat(),
            )
        )
        for event in events
    )
    return Identity(_SEPARATOR.join(["derived", *head, *parts]), "derived", event_time)


def build_ulid(project_id: str, identity: Identity) -> str:
    """
    The lowercase ULID of the build for ``identity`` in project
    ``project_id``: the same inputs always give the same ULID.
    """
    milliseconds = min(max(int(identity.time.timestamp() * 1000), 0), _MAX_MS)
    material = _SEPARATOR.join(["brigade-cr/1", project_id, identity.key]).encode("utf-8", "surrogateescape")
    return encode_ulid(milliseconds, hashlib.sha256(material).digest()[:10])
