"""
Quay (quay.io and Red Hat Quay) repository notifications (docs/registries.md
section 4.4).

Only ``repo_push`` builds: one record per entry of ``updated_tags``, which is
a list, or in the legacy (2013) shape an object ``{tag: image_id}``. Quay's
other events (builds, vulnerabilities, mirroring) carry ``docker_url`` but no
``updated_tags``: recognised here so that they are not built as ``generic``,
and ignored.

"Test notification" sends ``pruned_image_count`` (docs/registries.md section 4.4), but so did
real legacy pushes, next to ``pushed_image_count`` (quay.io's own 2015
notification docs): a test is ``pruned_image_count`` without
``pushed_image_count``, so a legacy push still builds.

Quay sends no digest, media type, event id, actor or time: the class is
``unknown``, the time is the receive time, and the consumer derives a key.
Since Quay disables a notification after three failed deliveries, only a
body no Quay could have sent (``updated_tags`` neither list nor object) is
refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import IGNORED, PUSH, UNKNOWN, Delivery, RegistryEvent
from brigade_cr.registries._common import evolve_event, make_event, outcome, split_reference, tag_of, text


@implementer(IPayloadFormat)
class QuayFormat:
    """Quay's "Webhook POST" notifications, recognised by ``docker_url``."""

    name = "quay"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return isinstance(document.get("docker_url"), str)

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        host, from_url, _, _ = split_reference(document.get("docker_url"))
        base = make_event(
            registry=self.name,
            action=IGNORED,
            time=delivery.received,
            host=host,
            repository=text(document, "repository") or from_url,
        )
        if "updated_tags" not in document:
            return [evolve_event(base, reason="unsupported event")]
        updated = document["updated_tags"]
        if isinstance(updated, Mapping):
            tags = list(updated)
        elif isinstance(updated, list):
            tags = updated
        else:
            raise BadRequest("Quay repo_push without a list of updated tags")
        if not tags:
            return [evolve_event(base, reason="untagged")]
        if "pruned_image_count" in document and "pushed_image_count" not in document:
            return [evolve_event(base, tag=tag_of(each)[0], reason="test") for each in tags]
        events = []
        for each in tags:
            action, reason, tag, klass = outcome(PUSH, each, UNKNOWN)
            events.append(evolve_event(base, action=action, reason=reason, tag=tag, artifact_class=klass))
        return events
