"""
A project cache that keeps authentication working through an API outage
(issue 5, promise P2).

Projects that have received deliveries are kept in memory and refreshed in
the background every ``ttl / 3`` seconds. While the Kubernetes API answers,
a project deleted or re-keyed there stops being accepted within ``ttl``
seconds. While it is unreachable or failing, the last known version is
served, however old, so deliveries keep being authenticated and accepted
(and, with the spool, queued). With a ``store`` path the known projects are
also kept on disk (mode 0600: they hold each project's ``crGatewaySecret``)
so that a restart during an outage still knows them.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from .errors import BackendUnavailable, ProjectNotFound
from .interfaces import IProjects
from .values import Project

DEFAULT_TTL = 30.0


@attrs.define
class _Entry:
    project: Project
    fetched: float


def _encode(project: Project) -> dict[str, Any]:
    secret = project.cr_gateway_secret
    return {
        "id": project.id,
        "name": project.name,
        "repository": project.repository,
        "clone_url": project.clone_url,
        "cr_gateway_secret": base64.b64encode(secret).decode("ascii") if secret is not None else None,
    }


def _decode(item: dict[str, Any]) -> Project:
    secret = item.get("cr_gateway_secret")
    return Project(
        id=str(item["id"]),
        name=str(item.get("name") or item["id"]),
        repository=str(item.get("repository") or ""),
        clone_url=str(item.get("clone_url") or ""),
        cr_gateway_secret=base64.b64decode(secret) if secret else None,
    )


def load_store(path: Path) -> list[Project]:
    """The projects saved at ``path``; none if it is missing or unreadable."""
    try:
        items = json.loads(path.read_text(encoding="utf-8"))["projects"]
        return [_decode(item) for item in items]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def save_store(path: Path, projects: list[Project]) -> None:
    """Save ``projects`` at ``path`` atomically, readable by the owner only."""
    temporary = path.with_name(path.name + ".tmp")
    content = json.dumps({"version": 1, "projects": [_encode(p) for p in projects]}).encode("utf-8")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)


@implementer(IProjects)
@attrs.define
class CachedProjects:
    """
    An ``IProjects`` in front of another (``inner``), as described above.

    ``run_blocking(f, *args)`` runs file I/O off the reactor and returns a
    Deferred; it is only used with a ``store``.
    """

    inner: IProjects
    clock: IReactorTime
    ttl: float = DEFAULT_TTL
    store: Path | None = None
    run_blocking: Callable[..., Deferred[Any]] | None = None
    _entries: dict[str, _Entry] = attrs.field(factory=dict, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    _saved: list[dict[str, Any]] | None = attrs.field(default=None, init=False)
    _failing: bool = attrs.field(default=False, init=False)
    _persisting: Deferred[None] | None = attrs.field(default=None, init=False)
    _persist_again: bool = attrs.field(default=False, init=False)

    log = Logger()

    def start(self) -> Deferred[None] | None:
        """Load the stored projects (if any) and begin refreshing in the background."""
        if self.store is not None:
            # Loaded entries count as old: refreshed at the first chance.
            for project in load_store(self.store):
                self._entries[project.id] = _Entry(project, float("-inf"))
            if self._entries:
                self.log.info("Loaded {count} known project(s) from {path}", count=len(self._entries), path=self.store)
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = self.clock
        self._loop.start(self.ttl / 3, now=False).addErrback(
            lambda failure: self.log.failure("Project refresh loop failed", failure)
        )
        return None

    def stop(self) -> None:
        """Stop refreshing."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def get(self, project_id: str) -> Deferred[Project]:
        entry = self._entries.get(project_id)
        if entry is not None and (self._failing or self.clock.seconds() - entry.fetched < self.ttl):
            return Deferred.fromCoroutine(self._known(entry))
        return Deferred.fromCoroutine(self._fetch(project_id, entry))

    async def _known(self, entry: _Entry) -> Project:
        return entry.project

    async def _fetch(self, project_id: str, entry: _Entry | None) -> Project:
        try:
            project: Project = await self.inner.get(project_id)
        except ProjectNotFound:
            self._forget(project_id)
            raise
        except BackendUnavailable:
            self._failing = True
            if entry is None:
                raise
            self.log.info(
                "Kubernetes unavailable: using the last known version of project {project_id}",
                project_id=project_id,
            )
            return entry.project
        self._failing = False
        known = self._entries.get(project_id)
        self._entries[project_id] = _Entry(project, self.clock.seconds())
        if known is None or known.project != project:
            # Saved at once, so that a crash right after still knows it.
            self._save_soon()
        return project

    def _save_soon(self) -> None:
        if self.store is None:
            return
        if self._persisting is not None:
            self._persist_again = True
            return

        def done(_: object) -> None:
            self._persisting = None
            if self._persist_again:
                self._persist_again = False
                self._save_soon()

        self._persisting = Deferred.fromCoroutine(self._persist())
        self._persisting.addBoth(done)

    def _forget(self, project_id: str) -> None:
        if self._entries.pop(project_id, None) is not None:
            self.log.info("Project {project_id} is gone: no longer accepted", project_id=project_id)
            self._save_soon()

    async def refresh(self) -> None:
        """Refresh every known project older than half the TTL, one at a time."""
        now = self.clock.seconds()
        for project_id, entry in list(self._entries.items()):
            if now - entry.fetched < self.ttl / 2:
                continue
            try:
                await self._fetch(project_id, entry)
            except ProjectNotFound:
                pass
            except BackendUnavailable:
                # The API is down: keep what we know, try again next round.
                break
        self._save_soon()

    async def _persist(self) -> None:
        if self.store is None or self.run_blocking is None:
            return
        snapshot = [_encode(entry.project) for entry in self._entries.values()]
        if snapshot == self._saved:
            return
        try:
            await self.run_blocking(save_store, self.store, [e.project for e in self._entries.values()])
            self._saved = snapshot
        except OSError as e:
            self.log.warn("Cannot save known projects to {path}: {error}", path=self.store, error=e.strerror)
        except Exception:
            self.log.failure("Cannot save known projects to {path}", path=self.store)
