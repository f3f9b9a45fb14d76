"""
The projects a gateway knows, all of them, before they are asked for
(promises P2 and P7 of docs/guarantees.md: no outage forgets a project, and no
answer or timing tells whether one exists).

``KnownProjects`` serves every ``get`` from memory. A ``ProjectSource``
keeps it up to date: the Kubernetes list-and-watch of ``kube/watch.py`` or
the directory rescan of ``local.py``. So an unknown project and a known one
cost the same (no API call per delivery), and the answer never depends on
the API answering at that moment:

- **in sync** (the last list succeeded and the watch runs): a hit fires at
  once; a miss fails with ``ProjectNotFound`` at once;
- **before the first sync** (start-up): a hit in the persisted set fires at
  once; any other lookup waits for the first sync, at most
  ``first_sync_timeout`` seconds (5), then fails with ``BackendUnavailable``
  (or, with a persisted set, is answered from it); the wait ends early when
  the source reports it cannot reach its store and a persisted set exists;
- **through an outage** (the source reports it is broken): the last known
  set is served, a miss is still ``ProjectNotFound``.

With a ``store`` path the set is also kept on disk (``save_store``, mode
0600: it holds each project's ``crGatewaySecret``), written atomically off
the reactor after every change, so that a restart during an outage still
knows the projects.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from brigade_cr.core.errors import BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IProjects
from brigade_cr.core.values import Project

DEFAULT_FIRST_SYNC_TIMEOUT = 5.0
# A crGatewaySecret shorter than this is guessable enough to warn about.
MIN_SECRET_LENGTH = 16


class ProjectSource(Protocol):
    """Something that tells a ``KnownProjects`` which projects exist."""

    def start(self, sink: Any) -> Any:
        """Begin telling ``sink`` (``replace``, ``put``, ``remove``, ``broken``)."""

    def stop(self) -> Any:
        """Stop."""


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
@attrs.define(eq=False)
class KnownProjects:
    """
    An ``IProjects`` answered from memory, kept up to date by ``source``, as
    described above. ``run_blocking(f, *args)`` runs file I/O off the
    reactor and returns a Deferred; it is only used with a ``store``.
    """

    source: ProjectSource
    clock: IReactorTime
    store: Path | None = None
    run_blocking: Callable[..., Deferred[Any]] | None = None
    first_sync_timeout: float = DEFAULT_FIRST_SYNC_TIMEOUT
    _projects: dict[str, Project] = attrs.field(factory=dict, init=False)
    # Listed in this process at least once.
    _synced_once: bool = attrs.field(default=False, init=False)
    # The last list succeeded and nothing broke since.
    _in_sync: bool = attrs.field(default=False, init=False)
    # Loaded from the store (before any list).
    _persisted: bool = attrs.field(default=False, init=False)
    # Lookups may be answered from what is known (not waiting any more).
    _settled: bool = attrs.field(default=False, init=False)
    # The source has said at least once that it cannot reach its store.
    _broken_seen: bool = attrs.field(default=False, init=False)
    _waiters: list[Deferred[None]] = attrs.field(factory=list, init=False)
    _warned: set[str] = attrs.field(factory=set, init=False)
    _saved: list[dict[str, Any]] | None = attrs.field(default=None, init=False)
    _persisting: Deferred[None] | None = attrs.field(default=None, init=False)
    _persist_again: bool = attrs.field(default=False, init=False)

    log = Logger()

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Load the stored set (if any, off the reactor), then start the
        source. Fires once the source is started.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> None:
        # The source first: a directory's is told its set at once, so the
        # gateway is ready before it listens; the store matters only until
        # the first sync.
        self.source.start(self)
        if self.store is not None and self.run_blocking is not None and not self._synced_once:
            try:
                stored: list[Project] = await self.run_blocking(load_store, self.store)
            except Exception:
                self.log.failure("Cannot load known projects from {path}", path=self.store)
                stored = []
            if stored and not self._synced_once:
                self._projects = {p.id: p for p in stored}
                self._persisted = True
                self._saved = [_encode(p) for p in stored]
                self._check_secrets(self._projects.values())
                self.log.info(
                    "Loaded {count} known project(s) from {path}; served until the first sync",
                    count=len(stored),
                    path=self.store,
                )
                # The source may already have said it cannot list.
                self._settle_if_broken()

    def stop(self) -> None:
        """Stop the source; lookups still answer from memory."""
        self.source.stop()

    def not_ready(self) -> str | None:
        """None once the first sync (or a persisted set) is loaded; else why not."""
        if self._synced_once or self._persisted:
            return None
        return "the projects have not been loaded yet (waiting for the first sync)"

    @property
    def in_sync(self) -> bool:
        """True while the last list succeeded and the source has not broken since."""
        return self._in_sync

    @property
    def known(self) -> frozenset[str]:
        """The IDs of the projects known now."""
        return frozenset(self._projects)

    # -- IProjects ---------------------------------------------------------

    def get(self, project_id: str) -> Deferred[Project]:
        """
        Fires at once with the known project ``project_id``; fails at once
        with ``ProjectNotFound`` when it is unknown (once settled: see the
        module docstring). Before the first sync it waits (bounded by
        ``first_sync_timeout``), then fails with ``BackendUnavailable`` if
        nothing was ever loaded.
        """
        project = self._projects.get(project_id)
        if project is not None:
            return succeed(project)
        if self._settled:
            return fail(ProjectNotFound("no such project"))
        return Deferred.fromCoroutine(self._after_first_sync(project_id))

    async def _after_first_sync(self, project_id: str) -> Project:
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        timer: IDelayedCall = self.clock.callLater(
            self.first_sync_timeout, lambda: None if waiter.called else waiter.callback(None)
        )
        try:
            await waiter
        finally:
            if timer.active():
                timer.cancel()
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        project = self._projects.get(project_id)
        if project is not None:
            return project
        if self._settled or self._persisted:
            raise ProjectNotFound("no such project")
        raise BackendUnavailable("the projects have not been loaded yet", retry_after=5)

    # -- ProjectSink: what the source tells ----------------------------------

    def replace(self, projects: dict[str, Project]) -> None:
        """The complete set, just listed."""
        if not self._in_sync and (self._synced_once or self._persisted):
            self.log.info("Projects in sync again: {count} known", count=len(projects))
        for gone in set(self._projects) - set(projects):
            self.log.info("Project {project_id} is gone: no longer accepted", project_id=gone)
        self._check_secrets(p for p in projects.values() if self._projects.get(p.id) != p)
        self._projects = dict(projects)
        self._synced_once = True
        self._in_sync = True
        self._settle()
        self._save_soon()

    def put(self, project: Project) -> None:
        """A project added or changed."""
        known = self._projects.get(project.id)
        if known == project:
            return
        self._check_secrets([project])
        self._projects[project.id] = project
        self.log.info(
            "Project {project_id} {change}", project_id=project.id, change="added" if known is None else "changed"
        )
        self._save_soon()

    def remove(self, project_id: str) -> None:
        """A project deleted, or no longer a project."""
        if self._projects.pop(project_id, None) is not None:
            self._warned.discard(project_id)
            self.log.info("Project {project_id} is gone: no longer accepted", project_id=project_id)
            self._save_soon()

    def broken(self, reason: str) -> None:
        """The source lost contact with its store: keep serving what is known."""
        if self._in_sync:
            self.log.warn(
                "Projects out of sync ({reason}): serving the {count} last known",
                reason=reason,
                count=len(self._projects),
            )
        self._in_sync = False
        self._broken_seen = True
        self._settle_if_broken()

    def _settle_if_broken(self) -> None:
        if self._broken_seen and (self._persisted or self._synced_once):
            self._settle()

    def _settle(self) -> None:
        self._settled = True
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.called:
                waiter.callback(None)

    def _check_secrets(self, projects: Any) -> None:
        for project in projects:
            secret = project.cr_gateway_secret
            if secret is not None and len(secret) < MIN_SECRET_LENGTH:
                if project.id not in self._warned:
                    self._warned.add(project.id)
                    self.log.warn(
                        "Project {project_id} has a crGatewaySecret shorter than {minimum} characters: "
                        "use a longer, random one",
                        project_id=project.id,
                        minimum=MIN_SECRET_LENGTH,
                    )
            else:
                self._warned.discard(project.id)

    # -- persistence -------------------------------------------------------

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

    async def _persist(self) -> None:
        if self.store is None or self.run_blocking is None:
            return
        projects = sorted(self._projects.values(), key=lambda p: p.id)
        snapshot = [_encode(p) for p in projects]
        if snapshot == self._saved:
            return
        try:
            await self.run_blocking(save_store, self.store, projects)
            self._saved = snapshot
        except OSError as e:
            self.log.warn("Cannot save known projects to {path}: {error}", path=self.store, error=e.strerror)
        except Exception:
            self.log.failure("Cannot save known projects to {path}", path=self.store)
