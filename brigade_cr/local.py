"""
A directory backend, for running without a cluster.

Projects are read from Secret manifests (YAML or JSON) in ``PATH/projects/``;
each build is written as a Secret manifest (JSON, which ``kubectl create -f``
accepts) to ``PATH/builds/``, atomically and never overwriting. All file I/O
runs in a thread pool, off the reactor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TypeVar

import attrs
import yaml
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .brigade import build_secret, project_from_secret, same_build
from .errors import BackendRejected, BackendUnavailable, ProjectNotFound
from .fileio import BlockingIO, ThreadedIO, fsync_directory
from .interfaces import IBuilds, IProjects
from .values import Build, Project, Receipt

T = TypeVar("T")
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


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
    """The projects and builds of a directory, doing their I/O in ``pool``."""
    blocking = ThreadedIO(reactor, pool)
    return DirectoryProjects(root, blocking), DirectoryBuilds(root, namespace, blocking)
