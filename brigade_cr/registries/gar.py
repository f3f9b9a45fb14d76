"""
Google Artifact Registry and Container Registry notifications, delivered by
a Pub/Sub push subscription (docs/registries.md section 4.8).

The wrapped body is ``{message: {data, messageId, publishTime, attributes},
subscription}``, ``data`` being base64 JSON ``{action, digest, tag}``. With
payload unwrapping the body is that JSON itself and the metadata moves to
``x-goog-pubsub-*`` headers; that form is supported too, since it costs one
branch: it is recognised by those headers (present when the subscription
writes metadata), and a body without ``message`` is read as unwrapped.

``INSERT`` with a tag builds (a new tag on an existing digest included);
``INSERT`` without one (a digest-only push, a child manifest) is ignored as
``untagged``; ``DELETE`` is a delete. Host and repository come from the
``tag`` reference, else the ``digest`` one. The event id is
``gar:<messageId>``. No media type is sent: class ``unknown``.

Undecodable base64 or ``data`` that is not a JSON object is a
``BadRequest``: Pub/Sub redelivers the message, but such a message is not
one Artifact Registry sent.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.payload import decode_document
from brigade_cr.core.values import DELETE, IGNORED, PUSH, UNKNOWN, Delivery, RegistryEvent
from brigade_cr.registries._common import evolve_event, make_event, outcome, parse_time, split_reference, tag_of, text

_ACTIONS = {"INSERT": PUSH, "DELETE": DELETE}
_HEADER_PREFIX = "x-goog-pubsub-"


def _decode(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, str):
        raise BadRequest("Pub/Sub message without data")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("Pub/Sub message data is not base64") from None
    try:
        return decode_document(raw)
    except BadRequest:
        raise BadRequest("Pub/Sub message data is not a JSON object") from None


@implementer(IPayloadFormat)
class GARFormat:
    """Artifact Registry (and GCR) events from a Pub/Sub push subscription."""

    name = "gar"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        message = document.get("message")
        if isinstance(message, Mapping) and "data" in message and "subscription" in document:
            return True
        return any(name.startswith(_HEADER_PREFIX) for name in headers)

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        if "message" in document:
            message = document["message"]
            if not isinstance(message, Mapping):
                raise BadRequest("Pub/Sub push without a message object")
            data = _decode(message.get("data"))
            message_id = text(message, "messageId") or text(message, "message_id")
            published = message.get("publishTime") or message.get("publish_time")
        else:
            data = document
            message_id = delivery.header(_HEADER_PREFIX + "message-id")
            published = delivery.header(_HEADER_PREFIX + "publish-time")
        host, repository, tag_value, _ = split_reference(text(data, "tag"))
        digest_host, digest_repository, _, digest = split_reference(text(data, "digest"))
        event = make_event(
            registry=self.name,
            action=IGNORED,
            time=parse_time(published, delivery.received),
            host=host or digest_host,
            repository=repository or digest_repository,
            tag=tag_of(tag_value)[0],
            digest=digest,
            event_id=f"gar:{message_id}" if message_id else None,
            event_id_source="sender" if message_id else "derived",
        )
        action = _ACTIONS.get(text(data, "action") or "")
        if action is None:
            return [evolve_event(event, reason="unsupported event")]
        action, reason, tag, klass = outcome(action, tag_value, UNKNOWN)
        return [evolve_event(event, action=action, reason=reason, tag=tag, artifact_class=klass)]
