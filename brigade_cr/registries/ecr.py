"""
AWS ECR events delivered by an EventBridge API destination (docs/registries.md
section 4.9).

The untransformed EventBridge event (``source == "aws.ecr"``) is required.
Only ``detail-type: ECR Image Action`` can build: ``PUSH`` + ``SUCCESS``
with a real tag builds, ``DELETE`` + ``SUCCESS`` is a delete. ``FAILURE``
(reason ``failure``), untagged pushes (multi-arch children included) and
other detail types (scans, replication, referrers, lifecycle) are ignored.

The host is ``<account>.dkr.ecr.<region>.amazonaws.com`` (``.com.cn`` in the
China regions); the event id is ``ecr:<id>``, stable across EventBridge's
retries.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import DELETE, IGNORED, PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import (
    artifact_class,
    digest_of,
    evolve_event,
    make_event,
    obj,
    outcome,
    parse_time,
    tag_of,
    text,
)

IMAGE_ACTION = "ECR Image Action"
_ACTIONS = {"PUSH": PUSH, "DELETE": DELETE}
_ACCOUNT = re.compile(r"[0-9]{12}")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+")


def _host(account: str | None, region: str | None) -> str | None:
    if not (account and region and _ACCOUNT.fullmatch(account) and _REGION.fullmatch(region)):
        return None
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{suffix}"


@implementer(IPayloadFormat)
class ECRFormat:
    """ECR's EventBridge events, recognised by ``source`` and ``detail-type``."""

    name = "ecr"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return document.get("source") == "aws.ecr" and "detail-type" in document

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        detail = obj(document, "detail")
        media_type = text(detail, "manifest-media-type")
        sender_id = text(document, "id") or None
        event = make_event(
            registry=self.name,
            action=IGNORED,
            time=parse_time(document.get("time"), delivery.received),
            host=_host(text(document, "account"), text(document, "region")),
            repository=text(detail, "repository-name") or None,
            digest=digest_of(detail.get("image-digest")),
            media_type=media_type,
            tag=tag_of(detail.get("image-tag"))[0],
            artifact_class=artifact_class(media_type, text(detail, "artifact-media-type")),
            event_id=f"ecr:{sender_id}" if sender_id else None,
            event_id_source="sender" if sender_id else "derived",
        )
        action = _ACTIONS.get(text(detail, "action-type") or "")
        if document.get("detail-type") != IMAGE_ACTION or action is None:
            return [evolve_event(event, reason="unsupported event")]
        if detail.get("result") != "SUCCESS":
            return [evolve_event(event, reason="failure")]
        action, reason, tag, klass = outcome(action, detail.get("image-tag"), event.artifact_class)
        return [evolve_event(event, action=action, reason=reason, tag=tag, artifact_class=klass)]
