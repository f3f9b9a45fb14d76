"""Azure Container Registry webhooks (docs/registries.md section 4.2)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import CHART, DELETE, IGNORED, OTHER, PING, PUSH, QUARANTINE, Delivery, RegistryEvent
from brigade_cr.registries._common import (
    INVALID_TAG,
    artifact_class,
    is_signature,
    make_event,
    obj,
    parse_time,
    tag_of,
    text,
)

# ACR action -> (our action, forced artifact class or None).
_ACTIONS: dict[str, tuple[str, str | None]] = {
    "push": (PUSH, None),
    "delete": (DELETE, None),
    "quarantine": (QUARANTINE, None),
    "chart_push": (PUSH, CHART),
    "chart_delete": (DELETE, CHART),
    "ping": (PING, None),
}


@implementer(IPayloadFormat)
class ACRFormat:
    """
    ACR sends one bare event object, ``{id, timestamp, action, target,
    request}``. It never retries, so anything unexpected in a recognised body
    is ignored with a 2xx rather than refused.
    """

    name = "acr"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        if headers.get("user-agent", "").startswith("AzureContainerRegistry/"):
            return True
        action = document.get("action")
        return (
            isinstance(document.get("id"), str)
            and "timestamp" in document
            and isinstance(action, str)
            and (isinstance(document.get("target"), Mapping) or action == "ping")
        )

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        action_name = document.get("action")
        if not isinstance(action_name, str):
            raise BadRequest("ACR event without an action")
        target = obj(document, "target")
        media_type = text(target, "mediaType")
        action, forced_class = _ACTIONS.get(action_name, (IGNORED, None))
        raw_tag = text(target, "tag")
        # A digest where a tag belongs is no tag ("untagged").
        tag, tag_reason = tag_of(raw_tag)
        reason = None
        if action == IGNORED:
            reason = "unknown action"
        elif action != PING and is_signature(tag):
            # Cosign and referrer tags name a signature, not a deployable
            # (docs/registries.md section 5.8).
            action, reason, forced_class = IGNORED, "signature", OTHER
        elif action != PING and tag_reason == INVALID_TAG:
            action, reason = IGNORED, INVALID_TAG
        elif action == PUSH and not tag:
            action, reason = IGNORED, "untagged"
        event_id = text(document, "id")
        host = text(document, "request", "host")
        return [
            make_event(
                registry=self.name,
                action=action,
                reason=reason,
                time=parse_time(document.get("timestamp"), delivery.received),
                host=host.lower() if host else None,
                repository=text(target, "repository"),
                tag=tag,
                digest=text(target, "digest"),
                media_type=media_type,
                artifact_class=forced_class or artifact_class(media_type),
                event_id=f"acr:{event_id}" if event_id else None,
                event_id_source="sender" if event_id else "derived",
            )
        ]
