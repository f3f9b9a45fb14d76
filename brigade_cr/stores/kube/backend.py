"""
``IProjects`` and ``IBuilds`` on the Kubernetes API: project Secrets are
read, build Secrets created, in one namespace.

A gateway does not look projects up with ``KubeProjects`` (one GET per
delivery would tell by its timing which projects exist): it serves them
from ``projects.KnownProjects``, kept by ``watch.ProjectWatch``.
``KubeProjects`` is the direct lookup, for tools and the contract tests.

How API answers become domain errors:

======================================  ==================  =====================
Kubernetes answer                       ``KubeProjects``    ``KubeBuilds``
======================================  ==================  =====================
2xx                                     ``Project``         ``Receipt``
2xx, not a ``brigade.sh/project``       ``ProjectNotFound``
404                                     ``ProjectNotFound`` ``BackendRejected``
409 on create, same build stored        (n/a)               ``Receipt(duplicate)``
409 on create, other content stored     (n/a)               ``BackendRejected``
400, 422, other 4xx                     ``Unavailable``     ``BackendRejected``
403                                     ``Unavailable``     ``BackendRejected``
401 (after one token refresh)           ``Unavailable``     ``Unavailable``
408, 429, 5xx                           ``Unavailable``     ``Unavailable``
connection/TLS failure, timeout         ``Unavailable``     ``Unavailable``
======================================  ==================  =====================

(``Unavailable`` is ``BackendUnavailable``, with ``retry_after`` when the
server sent ``Retry-After``.)

A 401 is ``BackendUnavailable``: the token may have rotated, and the client
has already re-read it once. A 403 on create is permanent, as promise P4
(docs/guarantees.md) says (400/403/404/422 are parked, not retried): the API refused this object
(RBAC, an admission policy), so with a spool the record is dead-lettered with
the reason, and an operator re-queues it after the fix (README). A 400 or
422 is about the object itself; a 404 on create means the namespace is
missing. For a project lookup every failure but 404 is ``BackendUnavailable``:
the gateway cannot check anyone's secret, which no sender can fix.

A create answered 5xx or timed out may still have been stored (promise P3, docs/guarantees.md):
retrying ``submit`` is safe, since the retry's 409 is checked against the
stored Secret with ``brigade.same_build`` and reported as a duplicate.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from brigade_cr.core.contract import build_secret, project_from_secret, same_build
from brigade_cr.core.errors import BackendRejected, BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IBuilds, IKubeRequestMetrics, IProjects
from brigade_cr.core.values import Build, Project, Receipt
from brigade_cr.stores.kube.client import (
    DEFAULT_MAX_PERSISTENT,
    DEFAULT_TIMEOUT,
    KubeClient,
    KubeStatusError,
    KubeTransportError,
)
from brigade_cr.stores.kube.config import KubeConfig

# A Secret name is a DNS-1123 subdomain.
_SECRET_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _describe(error: KubeStatusError) -> str:
    message = error.message[:200]
    return f"Kubernetes API answered {error.code} {error.reason}" + (f": {message}" if message else "")


def _transient(error: KubeStatusError) -> bool:
    return error.code in (401, 408, 429) or error.code >= 500


def _unavailable(error: KubeStatusError | KubeTransportError) -> BackendUnavailable:
    if isinstance(error, KubeTransportError):
        return BackendUnavailable(f"Kubernetes API unreachable: {error.reason}")
    return BackendUnavailable(_describe(error), error.retry_after)


@implementer(IProjects)
@attrs.define
class KubeProjects:
    """Brigade projects read from the project Secrets in ``namespace``."""

    client: KubeClient
    namespace: str

    log: ClassVar[Logger] = Logger()

    def get(self, project_id: str) -> Deferred[Project]:
        """
        Fires with the ``Project`` in the Secret named ``project_id``. Fails
        with ``ProjectNotFound`` when there is no such Secret, it is not a
        ``brigade.sh/project``, or ``project_id`` cannot be a Secret name
        (the API is not asked); with ``BackendUnavailable`` for every other
        failure (see the module's table).
        """
        return Deferred.fromCoroutine(self._get(project_id))

    async def _get(self, project_id: str) -> Project:
        if len(project_id) > 253 or not _SECRET_NAME.fullmatch(project_id):
            raise ProjectNotFound("not a valid project ID")
        try:
            secret = await self.client.get_secret(self.namespace, project_id)
        except KubeStatusError as e:
            if e.code == 404:
                raise ProjectNotFound("no such project") from None
            self.log.warn(
                "Cannot load project {project}: {reason}",
                project=project_id,
                code=e.code,
                reason=_describe(e),
            )
            raise _unavailable(e) from None
        except KubeTransportError as e:
            self.log.warn(
                "Cannot load project {project}: {reason}",
                project=project_id,
                reason=e.reason,
            )
            raise _unavailable(e) from None
        return project_from_secret(secret)


@implementer(IBuilds)
@attrs.define
class KubeBuilds:
    """Builds stored as Brigade v1 build Secrets in ``namespace``."""

    client: KubeClient
    namespace: str

    log: ClassVar[Logger] = Logger()

    def submit(self, build: Build) -> Deferred[Receipt]:
        """
        Create the build Secret ``brigade.build_secret(build, namespace)``.

        Fires with ``Receipt(build.name)`` when it was created, and with
        ``Receipt(build.name, duplicate=True)`` when a Secret of that name
        already holds this very build. Fails with ``BackendRejected`` when the
        name holds something else or the API refuses the object (400, 403,
        404, 422, other 4xx), and with ``BackendUnavailable`` (``retry_after``
        set when the server sent one) for 401, 408, 429, 5xx and transport
        failures.
        """
        return Deferred.fromCoroutine(self._submit(build))

    async def _submit(self, build: Build) -> Receipt:
        fields: dict[str, Any] = {"build": build.name, "project": build.project_id}
        try:
            await self.client.create_secret(self.namespace, build_secret(build, self.namespace))
        except KubeTransportError as e:
            self.log.warn("Cannot create build {build}: {reason}", reason=e.reason, **fields)
            raise _unavailable(e) from None
        except KubeStatusError as e:
            if e.code != 409:
                self.log.warn("Cannot create build {build}: {reason}", reason=_describe(e), code=e.code, **fields)
                if _transient(e):
                    raise _unavailable(e) from None
                raise BackendRejected(_describe(e)) from None
        else:
            # The gateway logs the delivery at info; this is the store's detail.
            self.log.debug("Created build {build} for {project}", **fields)
            return Receipt(build.name)
        return await self._existing(build, fields)

    async def _existing(self, build: Build, fields: dict[str, Any]) -> Receipt:
        """After a 409: is the stored Secret this build?"""
        try:
            existing = await self.client.get_secret(self.namespace, build.name)
        except KubeTransportError as e:
            raise _unavailable(e) from None
        except KubeStatusError as e:
            if e.code == 404:
                # Taken, then deleted before we could look: try again.
                raise BackendUnavailable(f"build secret {build.name} existed and then vanished") from None
            if _transient(e):
                raise _unavailable(e) from None
            raise BackendRejected(_describe(e)) from None
        if same_build(existing, build):
            self.log.debug("Build {build} for {project} already exists", **fields)
            return Receipt(build.name, duplicate=True)
        self.log.warn("Build name {build} is taken by a different Secret", **fields)
        raise BackendRejected(f"secret {build.name} exists with different content")


def make_kube_backend(
    reactor: Any,
    config: KubeConfig,
    namespace: str,
    timeout: float = DEFAULT_TIMEOUT,
    max_persistent: int = DEFAULT_MAX_PERSISTENT,
    metrics: IKubeRequestMetrics | None = None,
) -> tuple[KubeProjects, KubeBuilds, KubeClient]:
    """
    The Kubernetes projects and builds stores for ``namespace``, sharing one
    ``KubeClient.from_config(reactor, config, timeout, max_persistent)``
    (returned too, to ``close()`` on shutdown or probe with ``version()``).
    ``max_persistent`` is how many persistent connections the pool keeps:
    the builds in flight plus the project watch, so that no build pays a
    TLS handshake at steady state. Every request the client sends is
    observed in ``metrics`` (when given).

    Raises ``KubeConfigError`` for unusable TLS material; touches no network.
    """
    client = KubeClient.from_config(reactor, config, timeout=timeout, max_persistent=max_persistent, metrics=metrics)
    return KubeProjects(client, namespace), KubeBuilds(client, namespace), client
