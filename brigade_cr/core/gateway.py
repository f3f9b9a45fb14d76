"""
The use case: one delivery in, one Brigade build (or a reasoned no) out.

It knows nothing of HTTP or Kubernetes: it is handed an ``IProjects``, an
``IBuilds`` and a clock. Build IDs are derived from the event (see
``identity.py``), so a re-delivery is the same build. It counts each
delivery in an ``IGatewayMetrics`` (``app/metrics.py`` implements it) under
the outcome ``core/answers.py`` gives its error.

Each delivery that is built or ignored is logged once, at info, by the
gateway (``DELIVERY_LINE`` / ``IGNORED_LINE``, with every field as a key);
the stores below it log their steps at debug. Refusals are the gateway's
own info line; store failures the web layer's warning or error.

The payload formats default to ``brigade_cr.registries.FORMATS``: the one
import from core into ``registries`` (which themselves import only core),
allowed by name in ``tests/test_layers.py``.
"""

from __future__ import annotations

import secrets
from typing import Sequence

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from brigade_cr.core.answers import outcome_of
from brigade_cr.core.auth import HmacScheme, check_credentials
from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import BadRequest, ProjectNotFound, RateLimited, Unauthorized
from brigade_cr.core.identity import build_ulid, identity_of
from brigade_cr.core.interfaces import IBuilds, IGatewayMetrics, IPayloadFormat, IProjects
from brigade_cr.core.payload import decode_document
from brigade_cr.core.tokenbucket import RateLimiter
from brigade_cr.core.values import (
    CHART,
    DELETE,
    OTHER,
    PUSH,
    QUARANTINE,
    Build,
    Delivery,
    Receipt,
    RegistryEvent,
)
from brigade_cr.registries import FORMATS, recognise

BUILDABLE = frozenset({PUSH, DELETE, QUARANTINE})


@attrs.define
class _Seen:
    """What a delivery turned out to be, as far as it got (for metrics)."""

    format: str = "none"


# The one info line per delivery: one format each, so that a log pipeline
# can key on it; every name in it is also an event field.
DELIVERY_LINE = (
    "Delivery for {project_id}: {event_type} from {payload_format}, "
    "build {build_name} ({identity_source} identity): {outcome}"
)
IGNORED_LINE = "Delivery for {project_id} from {payload_format} ignored: {reason}"


def receipt_outcome(receipt: Receipt) -> str:
    """What a receipt is counted and logged as: ``queued``, ``duplicate`` or ``built``."""
    return "queued" if receipt.queued else "duplicate" if receipt.duplicate else "built"


TITLE_LIMIT = 1024
DUMMY_SECRET_LENGTH = 32


def failure_key(source: str, pid: str) -> str:
    """
    The failed-authentication limiter's key: a sender's failures on one
    project never refuse another project's deliveries, nor another sender's.
    """
    return f"{source} {pid}"


@attrs.frozen
class Accepted:
    """The delivery became ``build``; the store answered ``receipt``."""

    build: Build
    receipt: Receipt


@attrs.frozen
class Ignored:
    """
    The delivery was understood and deliberately not built (a ping, an
    untagged push, ...): answered 2xx so the sender does not retry.
    """

    project_id: str
    event_provider: str
    reason: str


def event_type(event: RegistryEvent) -> str:
    """The Brigade event type a buildable event becomes."""
    if event.action == DELETE:
        return "chart_delete" if event.artifact_class == CHART else "image_delete"
    if event.action == QUARANTINE:
        return "image_quarantine"
    if event.artifact_class == CHART:
        return "chart_push"
    if event.artifact_class == OTHER:
        return "artifact_push"
    return "image_push"


def _reference(event: RegistryEvent) -> str:
    name = event.repository or "unknown repository"
    if event.host:
        name = f"{event.host}/{name}"
    if event.tag:
        name += f":{event.tag}"
    return name


def titles(events: Sequence[RegistryEvent], kind: str) -> tuple[str, str]:
    """
    ``short_title`` and ``long_title`` for a build, so that ``brig`` and
    dashboards show what happened: registry, repository, tag, digest.
    """
    first = events[0]
    if first.repository is None:
        short = f"{kind} from a {first.registry} webhook"
        return short, short
    references = [_reference(event) for event in events]
    short = f"{kind} {references[0]}"
    if len(references) > 1:
        short += f" (+{len(references) - 1} more)"
    details = []
    for event, reference in zip(events, references, strict=True):
        detail = reference
        if event.digest:
            detail += f"@{event.digest}"
        if event.actor:
            detail += f" by {event.actor}"
        details.append(detail)
    long = f"{first.registry} {kind}: " + ", ".join(details)
    return short[:TITLE_LIMIT], long[:TITLE_LIMIT]


@attrs.define
class Gateway:
    """
    Turns deliveries into builds.

    ``default_ref`` is the commit ref used when the URL names none, since an empty ref breaks
    a project's git sidecar. With ``auth_required`` (the default) a project
    without a ``crGatewaySecret`` refuses every delivery. ``auth_failures``
    limits failed authentications per (source address, project), keyed by
    ``failure_key``; ``project_rate``, when
    set, limits accepted deliveries per project.
    """

    projects: IProjects
    builds: IBuilds
    clock: IReactorTime
    default_ref: str = "master"
    formats: Sequence[IPayloadFormat] = FORMATS
    auth_required: bool = True
    auth_failures: RateLimiter | None = None
    project_rate: RateLimiter | None = None
    metrics: IGatewayMetrics | None = None
    _warned: set[str] = attrs.field(factory=set, init=False)
    # What an unknown project's credentials are checked against: random per
    # process, and as long as a typical crGatewaySecret.
    _dummy_secret: bytes = attrs.field(factory=lambda: secrets.token_hex(DUMMY_SECRET_LENGTH // 2).encode(), init=False)

    # Every signature scheme the known formats use, once each: asked on every
    # delivery, and the formats do not change.
    signatures: tuple[HmacScheme, ...] = attrs.field(init=False)

    log = Logger()

    @signatures.default
    def _all_signatures(self) -> tuple[HmacScheme, ...]:
        return tuple(dict.fromkeys(scheme for each in self.formats for scheme in each.signatures))

    def _refuse(self, delivery: Delivery, pid: str, reason: str) -> Unauthorized:
        self.log.info(
            "Refused a delivery for {project_id!r} from {source}: {reason}",
            project_id=pid,
            source=delivery.source,
            reason=reason,
        )
        if self.auth_failures is not None:
            self.auth_failures.consume(failure_key(delivery.source, pid))
        return Unauthorized(reason)

    def _warn_once(self, pid: str, text: str, **fields: object) -> None:
        if pid not in self._warned:
            self._warned.add(pid)
            self.log.warn(text, project_id=pid, **fields)

    async def _authenticate(self, delivery: Delivery, pid: str) -> None:
        if self.auth_failures is not None:
            wait = self.auth_failures.blocked(failure_key(delivery.source, pid))
            if wait is not None:
                self.log.info(
                    "Refused a delivery for {project_id!r} from {source}: too many failed authentications",
                    project_id=pid,
                    source=delivery.source,
                )
                raise RateLimited("failed authentications", wait)
        try:
            project = await self.projects.get(pid)
        except ProjectNotFound:
            # The same steps as a wrong secret, so that the answer's timing
            # does not tell which projects exist: check the credentials
            # against a secret nobody knows, and refuse whatever they prove.
            check_credentials(self._dummy_secret, delivery, self.signatures)
            raise self._refuse(delivery, pid, "no such project") from None
        if project.cr_gateway_secret is None:
            if self.auth_required:
                # As for an unknown project: the same work as a wrong secret.
                check_credentials(self._dummy_secret, delivery, self.signatures)
                self._warn_once(
                    pid,
                    "Project {project_id} has no crGatewaySecret, so every delivery to it is refused. "
                    "Set one in its project Secret (see README, Authentication), "
                    "or run with --auth optional while migrating.",
                )
                raise self._refuse(delivery, pid, "project has no crGatewaySecret")
            self._warn_once(
                pid,
                "Project {project_id} has no crGatewaySecret: accepting its deliveries "
                "without authentication (--auth optional).",
            )
            return
        verdict = check_credentials(project.cr_gateway_secret, delivery, self.signatures)
        if not verdict.ok:
            raise self._refuse(delivery, pid, verdict.reason)

    def _choose_format(self, delivery: Delivery, document: dict[str, object]) -> IPayloadFormat:
        named = delivery.query_value("registry")
        if named:
            for each in self.formats:
                if each.name == named:
                    return each
            raise BadRequest("unknown registry in ?registry=")
        return recognise(dict(delivery.headers), document, self.formats)

    async def receive(self, delivery: Delivery) -> Accepted | Ignored:
        """
        Handle one delivery: authenticate it against its project, then parse
        it (never before), then build.

        Raises ``Unauthorized``, ``RateLimited``, ``BadRequest``,
        ``BackendUnavailable`` or ``BackendRejected``; ``core/answers.py``
        says what each is answered and counted as (the web layer answers,
        this counts the delivery in ``metrics`` under that outcome).
        """
        seen = _Seen()
        try:
            outcome = await self._receive(delivery, seen)
        except Exception as e:
            self._count(seen.format, outcome_of(e))
            raise
        if isinstance(outcome, Ignored):
            self._count(seen.format, "ignored")
        else:
            receipt = outcome.receipt
            self._count(seen.format, receipt_outcome(receipt))
            if self.metrics is not None and not receipt.duplicate:
                self.metrics.built(outcome.build.project_id, outcome.build.event_type)
        return outcome

    def _count(self, payload_format: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.delivered(payload_format, outcome)

    async def _receive(self, delivery: Delivery, seen: _Seen) -> Accepted | Ignored:
        pid = project_id(delivery.project_ref)
        await self._authenticate(delivery, pid)
        if self.project_rate is not None:
            wait = self.project_rate.consume(pid)
            if wait is not None:
                self.log.info("Refused a delivery for {project_id}: project rate limit", project_id=pid)
                raise RateLimited("project rate limit", wait)
        document = decode_document(delivery.body)
        sender = self._choose_format(delivery, document)
        seen.format = sender.name
        events = list(sender.parse(delivery, document))
        buildable = [event for event in events if event.action in BUILDABLE]
        if not buildable:
            reasons = sorted({event.reason or event.action for event in events})
            ignored = Ignored(pid, sender.name, ", ".join(reasons) or "no events")
            self.log.info(
                IGNORED_LINE,
                project_id=pid,
                payload_format=sender.name,
                reason=ignored.reason,
                outcome="ignored",
                events=len(events),
            )
            return ignored
        kinds = [event_type(event) for event in buildable]
        # A mixed envelope (an image and its signature or SBOM, say) is an
        # image push first of all.
        kind = "image_push" if "image_push" in kinds else kinds[0]
        short, long = titles(buildable, kind)
        identity = identity_of(delivery, buildable)
        build = Build(
            project_id=pid,
            ulid=build_ulid(pid, identity),
            event_type=kind,
            event_provider=sender.name,
            commit_ref=delivery.commit or self.default_ref,
            payload=delivery.body,
            short_title=short,
            long_title=long,
        )
        receipt = await self.builds.submit(build)
        self.log.info(
            DELIVERY_LINE,
            project_id=pid,
            event_type=kind,
            payload_format=sender.name,
            build_name=receipt.build_name,
            identity_source=identity.source,
            outcome=receipt_outcome(receipt),
            duplicate=receipt.duplicate,
            queued=receipt.queued,
            events=len(events),
            buildable=len(buildable),
        )
        return Accepted(build, receipt)
