"""Docker Hub repository webhooks (docs/registries.md section 4.1)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import artifact_class, make_event, obj, outcome, parse_time, text


@implementer(IPayloadFormat)
class DockerHubFormat:
    """
    Docker Hub fires only on push and carries no digest and no event id.

    ``callback_url`` is a dead capability URL: it is never read, called or
    logged.
    """

    name = "dockerhub"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return isinstance(document.get("push_data"), Mapping) and (
            text(document, "repository", "repo_name") is not None
        )

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        push = obj(document, "push_data")
        media_type = text(push, "media_type")
        # Very old payloads have no tag: never assume "latest". Cosign and
        # referrer tags name a signature (docs/registries.md section 5.8); a digest
        # where a tag belongs is no tag.
        action, reason, tag, klass = outcome(PUSH, text(push, "tag"), artifact_class(media_type))
        return [
            make_event(
                registry=self.name,
                action=action,
                reason=reason,
                time=parse_time(push.get("pushed_at"), delivery.received),
                host="docker.io",
                repository=text(document, "repository", "repo_name"),
                tag=tag,
                media_type=media_type,
                artifact_class=klass,
                actor=text(push, "pusher"),
            )
        ]
