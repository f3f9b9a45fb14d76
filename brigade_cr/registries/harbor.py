"""
Harbor webhooks, Default and CloudEvents payload formats (docs/registries.md
section 4.3).

Both formats carry the same ``event_data``: one event per resource in
``resources[]``. Only ``PUSH_ARTIFACT`` (``harbor.artifact.pushed``, 1.x
``pushImage``) with a real tag builds; ``DELETE_ARTIFACT``
(``harbor.artifact.deleted``, 1.x ``deleteImage``) becomes a delete; every
other type (pulls, scans, quotas, replication, retention, tags, ChartMuseum
charts) is ignored with a reason. Harbor puts the digest in ``tag`` for
digest-only, robot and proxy-cache pushes (docs/registries.md section 5.4):
that is no tag.

Harbor sends no media type, so the class is ``unknown`` (OCI charts are
``PUSH_ARTIFACT`` too). The Default format has no event id: the consumer
derives a key. A CloudEvent's ``id`` is kept as ``harbor:<id>`` on every
record fanned out from it; the consumer adds the tag to tell them apart.

Other CloudEvents (an Event Grid subscription, say) are out of scope: they
are not recognised here and fall through to ``generic``, as they did before
this format existed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import DELETE, IGNORED, PUSH, UNKNOWN, Delivery, RegistryEvent
from brigade_cr.registries._common import (
    digest_of,
    evolve_event,
    make_event,
    obj,
    outcome,
    parse_time,
    split_reference,
    text,
)

_PUSH_TYPES = frozenset({"PUSH_ARTIFACT", "harbor.artifact.pushed", "pushImage"})
_DELETE_TYPES = frozenset({"DELETE_ARTIFACT", "harbor.artifact.deleted", "deleteImage"})
# Harbor 2.x Default types are upper case (PUSH_ARTIFACT, SCANNING_FAILED);
# 1.x sent camel case.
_DEFAULT_TYPE = re.compile(r"[A-Z][A-Z0-9_]*")
_LEGACY_TYPES = frozenset(
    {
        "pushImage",
        "pullImage",
        "deleteImage",
        "uploadChart",
        "downloadChart",
        "deleteChart",
        "scanningFailed",
        "scanningCompleted",
    }
)
# Words in an event type -> the reason it is ignored; the first match wins.
_REASONS = (
    ("pull", "pull"),
    ("download", "pull"),
    ("scan", "scan"),
    ("quota", "quota"),
    ("replication", "replication"),
    ("retention", "retention"),
)


def _ignored_reason(event_type: str) -> str:
    lowered = event_type.lower()
    for word, reason in _REASONS:
        if word in lowered:
            return reason
    return "unsupported event"


def _is_cloudevent(headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
    content_type = headers.get("content-type", "").lower()
    return content_type.startswith("application/cloudevents+json") or "specversion" in document


@implementer(IPayloadFormat)
class HarborFormat:
    """
    Harbor's Default (``{type, occur_at, operator, event_data}``) and
    structured-mode CloudEvents (``type`` starting ``harbor.``, ``data``)
    formats, told apart by ``specversion``.
    """

    name = "harbor"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        kind = document.get("type")
        if not isinstance(kind, str):
            return False
        if _is_cloudevent(headers, document):
            return kind.startswith("harbor.")
        return isinstance(document.get("event_data"), Mapping) and (
            bool(_DEFAULT_TYPE.fullmatch(kind)) or kind in _LEGACY_TYPES
        )

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        if _is_cloudevent(dict(delivery.headers), document) or "event_data" not in document:
            data = obj(document, "data")
            when = document.get("time")
            sender_id = text(document, "id") or None
        else:
            data = obj(document, "event_data")
            when = document.get("occur_at")
            sender_id = None
        repository = text(data, "repository", "repo_full_name")
        if not repository:
            namespace, name = text(data, "repository", "namespace"), text(data, "repository", "name")
            repository = f"{namespace}/{name}" if namespace and name else None
        base = make_event(
            registry=self.name,
            action=IGNORED,
            time=parse_time(when, delivery.received),
            repository=repository,
            event_id=f"harbor:{sender_id}" if sender_id else None,
            event_id_source="sender" if sender_id else "derived",
            actor=text(document, "operator") or None,
        )
        kind = text(document, "type") or ""
        resources = data.get("resources")
        well_formed = isinstance(resources, list) and all(isinstance(each, Mapping) for each in resources)
        if kind in _PUSH_TYPES:
            action = PUSH
        elif kind in _DELETE_TYPES:
            action = DELETE
        else:
            # Not built, whatever its shape; its resources still say what it
            # was about.
            reason = _ignored_reason(kind)
            if not (well_formed and resources):
                return [evolve_event(base, reason=reason)]
            return [self._resource(base, IGNORED, resource, reason) for resource in resources]
        if not well_formed:
            raise BadRequest("Harbor artifact event without a list of resources")
        if not resources:
            return [evolve_event(base, reason="no resources")]
        return [self._resource(base, action, resource) for resource in resources]

    def _resource(
        self, base: RegistryEvent, action: str, resource: Mapping[str, Any], ignored: str | None = None
    ) -> RegistryEvent:
        host, from_url, _, _ = split_reference(resource.get("resource_url"))
        event_action, reason, tag, klass = outcome(action, resource.get("tag"), UNKNOWN)
        if ignored is not None:
            event_action, reason = IGNORED, ignored
        return evolve_event(
            base,
            action=event_action,
            reason=reason,
            host=host,
            repository=base.repository or from_url,
            tag=tag,
            digest=digest_of(resource.get("digest")),
            artifact_class=klass,
        )
