"""
In-memory projects and builds: the reference implementations of
``IProjects`` and ``IBuilds``, used by unit tests and as the model the other
implementations are checked against.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from brigade_cr.core.contract import build_secret, project_from_secret, same_build
from brigade_cr.core.errors import BackendRejected, BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.values import Build, Project, Receipt


@implementer(IProjects)
@attrs.define
class MemoryProjects:
    """Project Secrets held in a dict keyed by name; ``down`` simulates an outage."""

    secrets: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    down: bool = False

    def add(self, secret: dict[str, Any]) -> None:
        """Store a (project) Secret under its name."""
        self.secrets[secret["metadata"]["name"]] = secret

    def get(self, project_id: str) -> Deferred[Project]:
        if self.down:
            return fail(BackendUnavailable("memory projects are down", retry_after=1))
        secret = self.secrets.get(project_id)
        if secret is None:
            return fail(ProjectNotFound(project_id))
        try:
            return succeed(project_from_secret(secret))
        except ProjectNotFound as e:
            return fail(e)


@implementer(IBuilds)
@attrs.define
class MemoryBuilds:
    """Build Secrets held in a dict keyed by name; ``down`` simulates an outage."""

    namespace: str = "default"
    secrets: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    down: bool = False

    def submit(self, build: Build) -> Deferred[Receipt]:
        if self.down:
            return fail(BackendUnavailable("memory builds are down", retry_after=1))
        existing = self.secrets.get(build.name)
        if existing is not None:
            if same_build(existing, build):
                return succeed(Receipt(build.name, duplicate=True))
            return fail(BackendRejected(f"{build.name} exists with other content"))
        self.secrets[build.name] = build_secret(build, self.namespace)
        return succeed(Receipt(build.name))
