"""
CNCF Distribution notifications, v1 (2.x) and v2 (3.x) envelopes, as also
sent by GitLab self-managed (docs/registries.md section 4.5).

One envelope ``{"events": [...]}`` batches unrelated events; each becomes
one record, keyed ``distribution:<events[].id>``. Only a ``push`` of a
manifest or index (by media type, or ``/manifests/`` in ``target.url``)
with a real tag builds. Blob and layer pushes (reason ``layer``), untagged
manifests, ``pull`` and ``mount`` are ignored. A manifest, tag or repository
``delete`` becomes a delete; a delete recognisably of a blob (a layer media
type, or ``/blobs/`` in ``target.url``) is ignored. Distribution sends
manifest and blob deletes with the same fields (repository and digest), so a
bare digest delete is taken for a manifest delete.

Distribution retries an envelope until it is answered 2xx or 3xx, from an
in-memory queue: one bad event must not stall it, so a malformed event is
ignored (reason ``malformed``) rather than refused. Only an envelope that no
registry could have sent (``events`` not a list) is a ``BadRequest``.

3.x sends ``target`` as an OCI descriptor: its ``artifactType`` (and
Docker's ``vnd.docker.reference.type`` annotation) tells signatures,
attestations and SBOMs, which are ignored, from other artifacts, which
build as class ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import DELETE, IGNORED, PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import (
    artifact_class,
    digest_of,
    host_of,
    is_layer,
    is_manifest,
    make_event,
    obj,
    outcome,
    parse_time,
    text,
)

CONTENT_TYPE_PREFIX = "application/vnd.docker.distribution.events"
# Docker's mark on the attestation manifests BuildKit adds to an index.
_REFERENCE_TYPE = "vnd.docker.reference.type"


@implementer(IPayloadFormat)
class DistributionFormat:
    """
    Distribution's notification envelope, recognised by its content type
    (any version) or by a non-empty ``events`` list.
    """

    name = "distribution"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        if headers.get("content-type", "").lower().startswith(CONTENT_TYPE_PREFIX):
            return True
        # An empty list says nothing about the sender: left to generic.
        events = document.get("events")
        return isinstance(events, list) and any(isinstance(each, Mapping) for each in events)

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        events = document.get("events")
        if not isinstance(events, list):
            raise BadRequest("Distribution envelope without a list of events")
        if not events:
            return [make_event(registry=self.name, action=IGNORED, reason="no events", time=delivery.received)]
        return [self._event(delivery, each) for each in events]

    def _event(self, delivery: Delivery, event: Any) -> RegistryEvent:
        if not isinstance(event, Mapping):
            return make_event(registry=self.name, action=IGNORED, reason="malformed", time=delivery.received)
        target = obj(event, "target")
        media_type = text(target, "mediaType")
        # BuildKit marks its attestation manifests with an annotation, not an
        # artifactType; either says what the manifest is.
        artifact_type = text(target, "artifactType") or text(target, "annotations", _REFERENCE_TYPE)
        url = text(target, "url") or ""
        sender_id = text(event, "id") or None
        name = event.get("action")
        if name == "push" and (is_manifest(media_type) or "/manifests/" in url):
            action, reason, tag, klass = outcome(
                PUSH, target.get("tag"), artifact_class(media_type, None, artifact_type), artifact_type
            )
        elif name == "delete" and not (is_layer(media_type) or "/blobs/" in url):
            action, reason, tag, klass = outcome(
                DELETE, target.get("tag"), artifact_class(media_type, None, artifact_type), artifact_type
            )
        else:
            action, tag, klass = IGNORED, None, artifact_class(media_type, None, artifact_type)
            if name in ("push", "delete"):
                reason = "layer"
            elif name in ("pull", "mount"):
                reason = name
            elif isinstance(name, str):
                reason = "unsupported event"
            else:
                reason = "malformed"
        return make_event(
            registry=self.name,
            action=action,
            reason=reason,
            time=parse_time(event.get("timestamp"), delivery.received),
            host=host_of(text(event, "request", "host")),
            repository=text(target, "repository") or None,
            tag=tag,
            digest=digest_of(target.get("digest")),
            media_type=media_type,
            artifact_class=klass,
            event_id=f"distribution:{sender_id}" if sender_id else None,
            event_id_source="sender" if sender_id else "derived",
            actor=text(event, "actor", "name") or None,
        )
