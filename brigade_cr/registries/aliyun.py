"""
Alibaba Cloud (Aliyun) Container Registry webhooks (docs/registries.md section
4.11).

Docker-Hub-like, but ``repository`` has ``region`` and ``repo_full_name``
and ``push_data`` a ``digest``; recognised before Docker Hub for that
reason. Aliyun reports pushes only: a real tag builds, anything else is
ignored.

- The host defaults to the public endpoint ``registry.<region>.aliyuncs.com``;
  VPC and Enterprise Edition endpoints need configuration, which does not
  exist yet.
- ``pushed_at`` is ``"YYYY-MM-DD hh:mm:ss"`` with no zone, and nothing says
  which zone (the console shows the account's). Rather than guess UTC (off by
  eight hours for a China-region account) the receive time is used: Aliyun
  delivers within seconds of the push. A ``pushed_at`` that does carry a zone
  or is Unix seconds is read as such.
- There is no event id: the consumer derives a key, using ``pushed_at`` as
  sent.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Mapping, Sequence

from zope.interface import implementer

from brigade_cr.core.auth import HmacScheme
from brigade_cr.core.interfaces import IPayloadFormat
from brigade_cr.core.values import PUSH, UNKNOWN, Delivery, RegistryEvent
from brigade_cr.registries._common import digest_of, make_event, obj, outcome, parse_time, text

_REGION = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def _time(value: Any, received: datetime) -> datetime:
    # A zone-less pushed_at is the account's local time, not UTC: see above.
    return parse_time(value, received, naive_is_utc=False)


@implementer(IPayloadFormat)
class AliyunFormat:
    """Aliyun ACR push webhooks, recognised by ``push_data`` and the region."""

    name = "aliyun"
    signatures: tuple[HmacScheme, ...] = ()

    def recognise(self, headers: Mapping[str, str], document: Mapping[str, Any]) -> bool:
        return isinstance(document.get("push_data"), Mapping) and (
            text(document, "repository", "region") is not None
            or text(document, "repository", "repo_full_name") is not None
        )

    def parse(self, delivery: Delivery, document: Mapping[str, Any]) -> Sequence[RegistryEvent]:
        push = obj(document, "push_data")
        repository = obj(document, "repository")
        full_name = text(repository, "repo_full_name")
        if not full_name:
            namespace, name = text(repository, "namespace"), text(repository, "name")
            full_name = f"{namespace}/{name}" if namespace and name else None
        region = text(repository, "region")
        action, reason, tag, klass = outcome(PUSH, push.get("tag"), UNKNOWN)
        return [
            make_event(
                registry=self.name,
                action=action,
                reason=reason,
                time=_time(push.get("pushed_at"), delivery.received),
                host=f"registry.{region}.aliyuncs.com" if region and _REGION.fullmatch(region) else None,
                repository=full_name,
                tag=tag,
                digest=digest_of(push.get("digest")),
                artifact_class=klass,
            )
        ]
