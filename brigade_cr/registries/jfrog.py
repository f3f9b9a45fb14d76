"""
JFrog Artifactory predefined webhooks, Docker domain (docs/registries.md section
4.7).

Recognised by ``X-JFrog-Event-Auth`` or by the body's ``domain``,
``event_type`` and ``jpd_origin``. ``pushed`` with a real tag builds;
``deleted`` becomes a delete; ``promoted``, other event types and other
domains (artifacts, builds, ...) are ignored. Custom webhooks have free-form
bodies and are out of scope.

- The host is that of ``jpd_origin``, and the repository is
  ``<repo_key>/<image_name>``: together, the pull reference under
  Artifactory's "repository path" access method. The subdomain and port
  methods, and virtual repositories (which report the local ``repo_key``),
  need configuration, which does not exist yet.
- The digest is ``sha256:`` + ``data.sha256`` (bare hex of the manifest).
- The media type is derived from the manifest file ``data.name``
  (``list.manifest.json`` is a list or index, ``manifest.json`` a manifest)
  and ``data.image_type`` (``docker`` or ``oci``); without ``image_type``
  only an index is known to be an image.
- There is no event id (the consumer derives a key), no time (the receive
  time is used); ``source`` is the actor.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import DELETE, IGNORED, IMAGE, PUSH, Delivery, RegistryEvent
from brigade_cr.registries._common import artifact_class, evolve_event, make_event, obj, outcome, tag_of, text, url_host

_ACTIONS = {"pushed": PUSH, "deleted": DELETE}
_HEX = re.compile(r"[0-9a-f]{64}")
# (manifest file, image_type) -> the media type it stands for.
_MEDIA_TYPES = {
    ("list.manifest.json", "docker"): "application/vnd.docker.distribution.manifest.list.v2+json",
    ("list.manifest.json", "oci"): "application/vnd.oci.image.index.v1+json",
    ("manifest.json", "docker"): "application/vnd.docker.distribution.manifest.v2+json",
    ("manifest.json", "oci"): "application/vnd.oci.image.manifest.v1+json",
}


@implementer(IPayloadFormat)
class JFrogFormat:
    """
    Artifactory's Docker-domain webhooks. ``X-JFrog-Event-Auth`` carries
    either the secret itself or an HMAC-SHA256 of the body: the two modes
    cannot be told apart, so the scheme is marked ``or_token``.
    """

    name = "jfrog"
    signatures: tuple[HmacScheme, ...] = (HmacScheme("x-jfrog-event-auth", "sha256", "", or_token=True),)

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        if "x-jfrog-event-auth" in headers:
            return True
        return all(isinstance(document.get(key), str) for key in ("domain", "event_type", "jpd_origin"))

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        host, actor = url_host(document.get("jpd_origin")), text(document, "source") or None
        if text(document, "domain") != "docker":
            # Artifacts, builds, release bundles: nothing here is an image.
            return [
                make_event(
                    registry=self.name,
                    action=IGNORED,
                    reason="unsupported event",
                    time=delivery.received,
                    host=host,
                    actor=actor,
                )
            ]
        data = obj(document, "data")
        image, repo_key = text(data, "image_name"), text(data, "repo_key")
        repository = f"{repo_key}/{image}" if image and repo_key else image or None
        manifest = text(data, "name")
        media_type = _MEDIA_TYPES.get((manifest or "", (text(data, "image_type") or "").lower()))
        # A list or index is an image whatever its flavour (docs/registries.md section 3).
        klass = IMAGE if manifest == "list.manifest.json" else artifact_class(media_type)
        sha256 = text(data, "sha256")
        event = make_event(
            registry=self.name,
            action=IGNORED,
            time=delivery.received,
            host=host,
            repository=repository,
            digest=f"sha256:{sha256}" if sha256 and _HEX.fullmatch(sha256) else None,
            media_type=media_type,
            artifact_class=klass,
            tag=tag_of(data.get("tag"))[0],
            actor=actor,
        )
        action = _ACTIONS.get(text(document, "event_type") or "")
        if action is None:
            return [evolve_event(event, reason="unsupported event")]
        action, reason, tag, klass = outcome(action, data.get("tag"), event.artifact_class)
        return [evolve_event(event, action=action, reason=reason, tag=tag, artifact_class=klass)]
