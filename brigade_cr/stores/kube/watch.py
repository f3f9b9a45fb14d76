"""
The project Secrets of a namespace, known before they are asked for: a
list, then a watch from the list's ``resourceVersion``, feeding a
``ProjectSink`` (the in-memory project set of ``projects.py``).

The cycle, as client-go's reflector runs it:

- **list** ``fieldSelector=type=brigade.sh/project`` in pages of
  ``page_size``; the whole set replaces what the sink knew (``replace``),
  which is also when the sink is *in sync*;
- **watch** from the list's ``resourceVersion`` with
  ``allowWatchBookmarks=true``: ``ADDED`` and ``MODIFIED`` put a project,
  ``DELETED`` removes it, ``BOOKMARK`` only moves the ``resourceVersion``
  on; each event's ``resourceVersion`` is remembered, so a watch that ends
  resumes where it stopped;
- the server ends each watch after ``watch_timeout`` seconds (its
  ``timeoutSeconds``, 240): the next one starts at once from the last
  ``resourceVersion``. A stream silent for 30 s longer than that is
  dropped by the client. A watch that ends within a second of its start
  (again and again) is retried after ``Backoff`` instead of at once;
- ``410 Gone``/``Expired`` (as the answer's status or an ``ERROR`` event
  with code 410): the resourceVersion is too old to resume from, so list
  again;
- every ``resync`` seconds (default 300) the set is listed again in full
  anyway, so that nothing a watch could have missed lasts longer than that;
- any other failure (refused, reset, silent, timed out, 5xx, 403...) marks
  the sink *broken* (it keeps serving what it knew); after ``Backoff``
  (jittered, 0.25 s growing to 30 s, honouring ``Retry-After``) the set is
  listed again, and the watch resumes from that list.

Nothing here blocks: every call is asynchronous on the injected clock.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol

import attrs
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from brigade_cr.core.contract import project_from_secret
from brigade_cr.core.errors import ProjectNotFound
from brigade_cr.core.values import Project
from brigade_cr.stores.kube.client import KubeClient, KubeStatusError, KubeTransportError
from brigade_cr.stores.retry import Backoff

PROJECT_SELECTOR = "type=brigade.sh/project"
DEFAULT_RESYNC = 300.0
DEFAULT_WATCH_TIMEOUT = 240
DEFAULT_PAGE_SIZE = 500


class ProjectSink(Protocol):
    """What a project source tells the project set."""

    def replace(self, projects: dict[str, Project]) -> None:
        """The complete set, just listed: the set is in sync."""

    def put(self, project: Project) -> None:
        """A project added or changed."""

    def remove(self, project_id: str) -> None:
        """A project deleted (or no longer a project)."""

    def broken(self, reason: str) -> None:
        """The source lost contact; what is known stays known."""


class _Expired(Exception):
    """The resourceVersion is too old: list again."""


def project_or_none(secret: Any) -> Project | None:
    """The project a watched or listed Secret holds, or None if it is none."""
    if not isinstance(secret, dict) or secret.get("type") != "brigade.sh/project":
        return None
    try:
        return project_from_secret(secret)
    except (ProjectNotFound, ValueError, TypeError, KeyError):
        return None


def _name(secret: Any) -> str | None:
    metadata = secret.get("metadata") if isinstance(secret, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else None


def _version(secret: Any) -> str | None:
    metadata = secret.get("metadata") if isinstance(secret, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and version else None


@attrs.define(eq=False)
class ProjectWatch:
    """
    Lists and watches the project Secrets of ``namespace`` through
    ``client`` (see the module docstring), telling ``sink`` about them once
    ``start(sink)`` is called, until ``stop()``.
    """

    client: KubeClient
    namespace: str
    clock: IReactorTime
    backoff: Backoff = attrs.field(factory=lambda: Backoff(base=0.25))
    resync: float = DEFAULT_RESYNC
    watch_timeout: int = DEFAULT_WATCH_TIMEOUT
    page_size: int = DEFAULT_PAGE_SIZE
    resource_version: str | None = attrs.field(default=None, init=False)
    _sink: ProjectSink | None = attrs.field(default=None, init=False)
    _running: Deferred[None] | None = attrs.field(default=None, init=False)
    _pending: Deferred[Any] | None = attrs.field(default=None, init=False)
    _stopped: bool = attrs.field(default=False, init=False)

    log: ClassVar[Logger] = Logger()

    def start(self, sink: ProjectSink) -> None:
        """Begin listing and watching, in the background."""
        self._sink = sink
        self._stopped = False
        self._running = Deferred.fromCoroutine(self._run())
        self._running.addErrback(
            lambda f: None if f.check(CancelledError) else self.log.failure("Project watch failed", f)
        )

    def stop(self) -> None:
        """Stop: the call or wait in progress is cancelled."""
        self._stopped = True
        if self._pending is not None:
            self._pending.cancel()

    async def _wait(self, d: Deferred[Any]) -> Any:
        self._pending = d
        try:
            return await d
        finally:
            self._pending = None

    async def _sleep(self, seconds: float) -> None:
        slept: Deferred[None] = Deferred(lambda _: call.cancel() if call.active() else None)
        call: IDelayedCall = self.clock.callLater(seconds, slept.callback, None)
        await self._wait(slept)

    async def _run(self) -> None:
        assert self._sink is not None
        sink = self._sink
        attempt = 0
        # Watches in a row that ended (cleanly or 410) within a second of
        # their start: a server doing that again and again must not make
        # this a busy loop, so each such round waits as a failure would.
        quick = 0
        relist = True
        next_resync = 0.0
        while not self._stopped:
            started = self.clock.seconds()
            try:
                if quick:
                    await self._sleep(self.backoff.delay(quick - 1))
                    started = self.clock.seconds()
                if relist or self.clock.seconds() >= next_resync:
                    await self._list(sink)
                    relist = False
                    next_resync = self.clock.seconds() + self.resync
                    attempt = 0
                timeout = max(1, min(self.watch_timeout, math.ceil(next_resync - self.clock.seconds())))
                await self._watch(sink, timeout)
                attempt = 0
                quick = quick + 1 if self.clock.seconds() - started < 1.0 else 0
            except _Expired:
                self.log.info(
                    "Project watch: resourceVersion {version} expired; listing again", version=self.resource_version
                )
                relist = True
                quick = quick + 1 if self.clock.seconds() - started < 1.0 else 0
            except (KubeStatusError, KubeTransportError) as e:
                if isinstance(e, KubeStatusError) and e.code == 410:
                    self.log.info("Project watch: 410 Gone; listing again")
                    relist = True
                    quick = quick + 1 if self.clock.seconds() - started < 1.0 else 0
                    continue
                quick = 0
                reason = f"Kubernetes API answered {e.code} {e.reason}" if isinstance(e, KubeStatusError) else e.reason
                retry_after = e.retry_after if isinstance(e, KubeStatusError) else None
                delay = self.backoff.delay(attempt, retry_after)
                attempt += 1
                # After a failure the next round lists again: what changed
                # meanwhile may be past the server's watch history anyway,
                # and a fresh list is what puts the set back in sync.
                relist = True
                sink.broken(reason)
                self.log.warn(
                    "Project watch interrupted ({reason}); serving the last known projects, retrying in {delay:.1f}s",
                    reason=reason,
                    delay=delay,
                    attempt=attempt,
                )
                await self._sleep(delay)

    async def _list(self, sink: ProjectSink) -> None:
        projects: dict[str, Project] = {}
        continue_token: str | None = None
        pages = 0
        while True:
            page = await self._wait(
                self.client.list_secrets(
                    self.namespace,
                    field_selector=PROJECT_SELECTOR,
                    limit=self.page_size,
                    continue_token=continue_token,
                )
            )
            pages += 1
            for secret in page.get("items") or []:
                project = project_or_none(secret)
                if project is not None:
                    projects[project.id] = project
            metadata = page.get("metadata") or {}
            continue_token = metadata.get("continue") or None
            if continue_token is None:
                version = metadata.get("resourceVersion")
                self.resource_version = str(version) if version else None
                break
        sink.replace(projects)
        self.log.info(
            "Project watch: listed {count} project(s) in {pages} page(s) at resourceVersion {version}",
            count=len(projects),
            pages=pages,
            version=self.resource_version,
        )

    async def _watch(self, sink: ProjectSink, timeout: int) -> None:
        def on_event(event: dict[str, Any]) -> None:
            kind = event.get("type")
            obj = event.get("object")
            if kind == "ERROR":
                code = obj.get("code") if isinstance(obj, dict) else None
                if code == 410:
                    raise _Expired()
                message = obj.get("message") if isinstance(obj, dict) else None
                raise KubeTransportError(f"watch ERROR event {code}: {str(message)[:200]}")
            version = _version(obj)
            if kind in ("ADDED", "MODIFIED"):
                project = project_or_none(obj)
                name = _name(obj)
                if project is not None:
                    sink.put(project)
                elif name is not None:
                    sink.remove(name)
            elif kind == "DELETED":
                name = _name(obj)
                if name is not None:
                    sink.remove(name)
            elif kind != "BOOKMARK":
                raise KubeTransportError(f"unknown watch event type {str(kind)[:40]!r}")
            if version is not None:
                self.resource_version = version

        await self._wait(
            self.client.watch_secrets(
                self.namespace,
                on_event,
                field_selector=PROJECT_SELECTOR,
                resource_version=self.resource_version,
                timeout_seconds=timeout,
            )
        )
