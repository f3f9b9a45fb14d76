"""
A directory backend, for running without a cluster.

Projects are read from Secret manifests (YAML or JSON) in ``PATH/projects/``:
``DirectoryScan`` rescans that directory every ``interval`` seconds (2 by
default) and tells the in-memory ``KnownProjects`` (``projects.py``) the
whole set whenever a file was added, changed or removed (names, sizes and
modification times are compared, so a rescan of an unchanged directory reads
no manifest). A project file edited takes effect within ``interval`` seconds
plus the time to read the directory. Each build is written as a Secret manifest (JSON, which ``kubectl create -f``
accepts) to ``PATH/builds/``, atomically and never overwriting. All file I/O
runs in a thread pool, off the reactor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import attrs
import yaml
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from brigade_cr.core.contract import build_secret, project_from_secret, same_build
from brigade_cr.core.errors import BackendRejected, BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.values import Build, Project, Receipt
from brigade_cr.stores.fileio import BlockingIO, ThreadedIO, fsync_directory

T = TypeVar("T")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
DEFAULT_RESCAN_INTERVAL = 2.0

# What a rescan compares: (name, size, mtime in ns) of each manifest file.
Signature = tuple[tuple[str, int, int], ...]


def manifest_signature(projects_dir: Path) -> Signature:
    """
    The names, sizes and modification times of the manifests in
    ``projects_dir`` (empty when it is missing). Raises ``OSError`` when it
    cannot be read.
    """
    try:
        entries = sorted(os.scandir(projects_dir), key=lambda e: e.name)
    except FileNotFoundError:
        return ()
    found = []
    for entry in entries:
        if not entry.name.endswith(MANIFEST_SUFFIXES):
            continue
        try:
            if not entry.is_file():
                continue
            info = entry.stat()
        except FileNotFoundError:
            continue
        found.append((entry.name, info.st_size, info.st_mtime_ns))
    return tuple(found)


def read_projects(projects_dir: Path) -> tuple[Signature, dict[str, Project]]:
    """
    Every project among the manifests in ``projects_dir``, by ID, and the
    signature they were read at. A Secret that is not a
    ``brigade.sh/project`` is none; when two manifests name the same
    project, the file first in name order wins. Raises ``OSError`` when the
    directory cannot be read.
    """
    signature = manifest_signature(projects_dir)
    projects: dict[str, Project] = {}
    for name, _, _ in signature:
        for secret in _manifests(projects_dir / name):
            metadata = secret.get("metadata")
            if not isinstance(metadata, dict) or not isinstance(metadata.get("name"), str):
                continue
            if metadata["name"] in projects:
                continue
            try:
                projects[metadata["name"]] = project_from_secret(secret)
            except (ProjectNotFound, ValueError):
                continue
    return signature, projects


def read_project(projects_dir: Path, project_id: str) -> Project:
    """
    The project whose Secret is named ``project_id`` among the manifests in
    ``projects_dir`` (a file may hold several YAML documents or a ``List``).

    Raises ``ProjectNotFound`` when none is, ``BackendUnavailable`` when the
    directory cannot be read.
    """
    try:
        paths = sorted(projects_dir.iterdir())
    except FileNotFoundError:
        raise ProjectNotFound(project_id) from None
    except OSError as e:
        raise BackendUnavailable(f"cannot read {projects_dir}: {e.strerror}") from None
    for path in paths:
        if path.suffix not in MANIFEST_SUFFIXES or not path.is_file():
            continue
        for secret in _manifests(path):
            metadata = secret.get("metadata")
            if isinstance(metadata, dict) and metadata.get("name") == project_id:
                return project_from_secret(secret)
    raise ProjectNotFound(project_id)


def _manifests(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("rb") as f:
            documents = list(yaml.safe_load_all(f))
    except (OSError, yaml.YAMLError):
        # One unreadable file must not hide every other project.
        return []
    found: list[dict[str, Any]] = []
    for document in documents:
        if not isinstance(document, dict):
            continue
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            found.extend(item for item in document["items"] if isinstance(item, dict))
        elif document.get("kind") == "Secret":
            found.append(document)
    return found


def write_build(builds_dir: Path, build: Build, namespace: str) -> Receipt:
    """
    Write ``build`` as ``builds_dir/<name>.json``: to a temporary file,
    fsynced, then linked into place (which fails rather than overwrite) and
    the directory fsynced. A same-named build with the same content is a
    duplicate; with other content, ``BackendRejected``.
    """
    secret = build_secret(build, namespace)
    final = builds_dir / f"{build.name}.json"
    temporary = builds_dir / f".{build.name}.{os.getpid()}.tmp"
    try:
        builds_dir.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as f:
            f.write(json.dumps(secret, indent=2).encode("utf-8") + b"\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(temporary, final)
        except FileExistsError:
            with final.open("rb") as f:
                existing = json.load(f)
            if same_build(existing, build):
                return Receipt(build.name, duplicate=True)
            raise BackendRejected(f"{final.name} exists with other content") from None
        fsync_directory(builds_dir)
    except OSError as e:
        raise BackendUnavailable(f"cannot write {final}: {e.strerror}", retry_after=5) from None
    finally:
        try:
            temporary.unlink()
        except OSError:
            pass
    return Receipt(build.name)


@implementer(IProjects)
@attrs.define
class DirectoryProjects:
    """Projects from Secret manifests in ``root/projects/``."""

    root: Path
    blocking: BlockingIO

    def get(self, project_id: str) -> Deferred[Project]:
        return self.blocking.run(read_project, self.root / "projects", project_id)


@attrs.define(eq=False)
class DirectoryScan:
    """
    The ``ProjectSource`` of a directory: every ``interval`` seconds the
    signature of ``projects_dir`` is read in the thread pool; when it
    differs from the last one, every manifest is read and the sink is told
    the whole set (``replace``). A directory that cannot be read makes the
    sink ``broken`` (it keeps what it knew) until it can be read again.
    """

    projects_dir: Path
    blocking: BlockingIO
    clock: IReactorTime
    interval: float = DEFAULT_RESCAN_INTERVAL
    # What ``read_projects`` gave before the reactor ran (``makeService``),
    # told at ``start`` so that the set is loaded, and the gateway ready,
    # before it listens.
    initial: tuple[Signature, dict[str, Project]] | None = None
    _sink: Any = attrs.field(default=None, init=False)
    _loop: LoopingCall | None = attrs.field(default=None, init=False)
    _signature: Signature | None = attrs.field(default=None, init=False)
    _failing: bool = attrs.field(default=False, init=False)

    log: ClassVar[Logger] = Logger()

    def start(self, sink: Any) -> None:
        """
        Tell ``sink`` the ``initial`` set at once, if there is one, else
        scan now; then rescan every ``interval`` seconds.
        """
        self._sink = sink
        if self.initial is not None:
            self._signature, projects = self.initial
            sink.replace(projects)
        self._loop = LoopingCall(self.rescan)
        self._loop.clock = self.clock
        self._loop.start(self.interval, now=self.initial is None).addErrback(
            lambda failure: self.log.failure("Project rescan loop failed", failure)
        )

    def stop(self) -> None:
        """Stop rescanning."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def rescan(self) -> Deferred[None]:
        """One rescan; fires when the sink has been told (or nothing changed)."""
        return Deferred.fromCoroutine(self._rescan())

    async def _rescan(self) -> None:
        try:
            signature = await self.blocking.run(manifest_signature, self.projects_dir)
            if signature == self._signature and not self._failing:
                return
            signature, projects = await self.blocking.run(read_projects, self.projects_dir)
        except OSError as e:
            if not self._failing:
                self.log.warn("Cannot read {path}: {error}", path=self.projects_dir, error=e.strerror)
            self._failing = True
            self._sink.broken(f"cannot read {self.projects_dir}: {e.strerror}")
            return
        self._failing = False
        self._signature = signature
        self._sink.replace(projects)


@implementer(IBuilds)
@attrs.define
class DirectoryBuilds:
    """Build Secret manifests written to ``root/builds/``."""

    root: Path
    namespace: str
    blocking: BlockingIO

    def submit(self, build: Build) -> Deferred[Receipt]:
        return self.blocking.run(write_build, self.root / "builds", build, self.namespace)


def directory_backend(
    reactor: IReactorFromThreads, pool: ThreadPool, root: Path, namespace: str
) -> tuple[DirectoryProjects, DirectoryBuilds]:
    """
    The projects (read on each call; ``DirectoryScan`` is what a gateway
    serves from) and builds of a directory, doing their I/O in ``pool``.
    """
    blocking = ThreadedIO(reactor, pool)
    return DirectoryProjects(root, blocking), DirectoryBuilds(root, namespace, blocking)
