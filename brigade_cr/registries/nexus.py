"""
Sonatype Nexus Repository 3 repository webhooks (docs/registries.md section 4.10).

Recognised by ``X-Nexus-Webhook-Id``. Only component events
(``rm:repository:component``) of format ``docker`` are read: ``CREATED`` and
``UPDATED`` with a real tag build, and ``DELETED`` is a delete (the same
section). A delete build is answered 2xx like every other delivery, and
docs/registries.md section 3 makes every delete its own build type, so a
deleted Docker component (a tag: ``component.version``) becomes an
``image_delete`` like every other sender's. Asset, repository and audit
events, other formats and other actions are ignored.

Nexus sends no host (it depends on the per-repository connector port or
path, which needs configuration), digest or media type: class ``unknown``.
The event id is ``nexus:<X-Nexus-Webhook-Delivery>``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import DELETE, IGNORED, PUSH, UNKNOWN, Delivery, RegistryEvent
from brigade_cr.registries._common import evolve_event, make_event, obj, outcome, parse_time, tag_of, text

COMPONENT_EVENTS = "rm:repository:component"
_ACTIONS = {"CREATED": PUSH, "UPDATED": PUSH, "DELETED": DELETE}


@implementer(IPayloadFormat)
class NexusFormat:
    """Nexus 3 webhooks, signed with HMAC-SHA1 over the body."""

    name = "nexus"
    signatures: tuple[HmacScheme, ...] = (HmacScheme("x-nexus-webhook-signature", "sha1"),)

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return "x-nexus-webhook-id" in headers

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        component = obj(document, "component")
        delivery_id = delivery.header("x-nexus-webhook-delivery") or None
        event = make_event(
            registry=self.name,
            action=IGNORED,
            time=parse_time(document.get("timestamp"), delivery.received),
            event_id=f"nexus:{delivery_id}" if delivery_id else None,
            event_id_source="sender" if delivery_id else "derived",
            actor=text(document, "initiator") or None,
        )
        kind = delivery.header("x-nexus-webhook-id")
        if kind is None:
            # Chosen by ?registry=nexus without Nexus's headers.
            return [evolve_event(event, reason="no event header")]
        if kind != COMPONENT_EVENTS:
            return [evolve_event(event, reason="unsupported event")]
        if text(component, "format") != "docker":
            return [evolve_event(event, reason="not docker")]
        # Docker components: the name is the repository, the version a tag.
        event = evolve_event(event, repository=text(component, "name") or None, tag=tag_of(component.get("version"))[0])
        action = _ACTIONS.get(text(document, "action") or "")
        if action is None:
            return [evolve_event(event, reason="unsupported event")]
        action, reason, tag, klass = outcome(action, component.get("version"), UNKNOWN)
        return [evolve_event(event, action=action, reason=reason, tag=tag, artifact_class=klass)]
