"""
GitHub Packages webhooks: ``package``, the legacy ``registry_package`` (GitHub
App installations) and ``ping`` (docs/registries.md section 4.6).

Recognised by the ``X-GitHub-Event`` header alone (docs/registries.md section 2, test 1). A
``published`` or ``updated`` container package version with a real tag
builds. Untagged platform manifests (``tag.name == ""``; one per platform of
a multi-arch push, besides the tagged index), other ecosystems (npm, maven,
...), other actions and other events are ignored; ``ping`` is a ping.

The event id is ``github:<X-GitHub-Delivery>``, kept on manual redelivery.
The repository comes from ``package_url`` (which may end in a bare ``:``),
lower-cased, else from ``namespace/name``; the host from ``package_url``,
else ``ghcr.io``. The config media type tells charts from images.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.errors import BadRequest
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import IGNORED, PING, PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import (
    artifact_class,
    digest_of,
    evolve_event,
    make_event,
    obj,
    outcome,
    parse_time,
    split_reference,
    tag_of,
    text,
)

_PACKAGE_EVENTS = ("package", "registry_package")
_BUILD_ACTIONS = frozenset({"published", "updated"})
# CONTAINER for ghcr.io; docker for the retired docker.pkg.github.com.
_CONTAINER_TYPES = frozenset({"container", "docker"})


@implementer(IPayloadFormat)
class GitHubFormat:
    """GitHub's package webhooks, signed with HMAC-SHA256 over the body."""

    name = "github"
    signatures: tuple[HmacScheme, ...] = (HmacScheme("x-hub-signature-256", "sha256", "sha256="),)

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return "x-github-event" in headers

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        delivery_id = delivery.header("x-github-delivery") or None
        base = make_event(
            registry=self.name,
            action=IGNORED,
            time=delivery.received,
            event_id=f"github:{delivery_id}" if delivery_id else None,
            event_id_source="sender" if delivery_id else "derived",
            actor=text(document, "sender", "login") or None,
        )
        event = delivery.header("x-github-event")
        if event == "ping":
            return [evolve_event(base, action=PING)]
        if event is None:
            # Chosen by ?registry=github without GitHub's headers: nothing
            # says what the body is.
            return [evolve_event(base, reason="no event header")]
        if event not in _PACKAGE_EVENTS:
            return [evolve_event(base, reason="unsupported event")]
        # Read the object the header names; tolerate the other name, since
        # the two events differ only in it.
        package = next(
            (document[key] for key in (event, *_PACKAGE_EVENTS) if isinstance(document.get(key), Mapping)),
            None,
        )
        if package is None:
            raise BadRequest("GitHub package event without a package")
        return [self._package(base, text(document, "action"), package)]

    def _package(self, base: RegistryEvent, action_name: str | None, package: Mapping[str, Any]) -> RegistryEvent:
        version = obj(package, "package_version")
        namespace, name = text(package, "namespace"), text(package, "name")
        package_type = text(package, "package_type")
        if not package_type or package_type.lower() not in _CONTAINER_TYPES:
            # npm, maven, ...: nothing here names an image.
            named = f"{namespace}/{name}".lower() if namespace and name else None
            return evolve_event(base, repository=named, reason="not a container")
        metadata = obj(version, "container_metadata")
        media_type = text(metadata, "manifest", "media_type")
        config_type = text(metadata, "manifest", "config", "media_type")
        host, repository, _, _ = split_reference((text(version, "package_url") or "").rstrip(":"))
        if not repository:
            repository = f"{namespace}/{name}" if namespace and name else None
        if action_name == "updated":
            when = version.get("updated_at") or version.get("created_at")
        else:
            when = version.get("created_at") or version.get("updated_at")
        event = evolve_event(
            base,
            time=parse_time(when, base.time),
            host=host or "ghcr.io",
            repository=repository.lower() if repository else None,
            digest=digest_of(text(metadata, "tag", "digest")) or digest_of(version.get("version")),
            media_type=media_type,
            artifact_class=artifact_class(media_type, config_type),
        )
        tag_value = obj(metadata, "tag").get("name")
        if action_name not in _BUILD_ACTIONS:
            return evolve_event(event, tag=tag_of(tag_value)[0], reason="unsupported event")
        action, reason, tag, klass = outcome(PUSH, tag_value, event.artifact_class)
        return evolve_event(event, action=action, reason=reason, tag=tag, artifact_class=klass)
