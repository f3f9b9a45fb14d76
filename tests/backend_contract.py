"""
One contract every ``IProjects`` / ``IBuilds`` pair must meet.

A test module subclasses ``BackendContract`` and provides a ``backend``
fixture yielding a ``BackendUnderTest``; the same assertions then run against
the in-memory, directory and Kubernetes implementations.
"""

from __future__ import annotations

import base64
from typing import Any, Awaitable, Callable

import attrs
import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from brigade_cr.core.contract import BUILD_DATA_KEYS, build_secret, project_id
from brigade_cr.core.errors import BackendRejected, ProjectNotFound
from brigade_cr.core.interfaces import IBuilds, IProjects
from brigade_cr.core.values import Build, Receipt


@attrs.define
class BackendUnderTest:
    """
    The implementation under test, plus test-side access to its store:
    ``seed(secret)`` stores a Secret as if created by ``brig`` or kubectl, and
    ``stored(name)`` returns a stored build Secret (or None).
    """

    projects: Any
    builds: Any
    namespace: str
    seed: Callable[[dict[str, Any]], Awaitable[None]]
    stored: Callable[[str], Awaitable[dict[str, Any] | None]]


def project_secret(name: str, secret_type: str = "brigade.sh/project", **data: bytes) -> dict[str, Any]:
    """A project Secret for ``name``, as ``brig project create`` writes it."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": secret_type,
        "metadata": {
            "name": project_id(name),
            "labels": {"app": "brigade", "component": "project", "heritage": "brigade"},
            "annotations": {"projectName": name},
        },
        "data": {key: base64.b64encode(value).decode() for key, value in data.items()},
    }


def a_build(ulid: str = "01jgq8w4h0aaaaaaaaaaaaaaaa", payload: bytes = b'{"x": "\xc3\xa9"}') -> Build:
    """A build for the project acme/webapp."""
    return Build(
        project_id=project_id("acme/webapp"),
        ulid=ulid,
        event_type="image_push",
        event_provider="dockerhub",
        commit_ref="master",
        payload=payload,
        short_title="image_push docker.io/acme/webapp:v1",
        long_title="dockerhub image_push: docker.io/acme/webapp:v1",
    )


class BackendContract:
    """The shared behaviour of every backend."""

    def test_interfaces(self, backend: BackendUnderTest) -> None:
        """Both halves provide their interfaces."""
        assert verifyObject(IProjects, backend.projects)
        assert verifyObject(IBuilds, backend.builds)

    @pytest_twisted.ensureDeferred
    async def test_project_found(self, backend: BackendUnderTest) -> None:
        """A project Secret is found by its ID and read."""
        await backend.seed(project_secret("acme/webapp", repository=b"github.com/acme/webapp", crGatewaySecret=b"k"))
        project = await backend.projects.get(project_id("acme/webapp"))
        assert project.id == project_id("acme/webapp")
        assert project.name == "acme/webapp"
        assert project.repository == "github.com/acme/webapp"
        assert project.cr_gateway_secret == b"k"

    @pytest_twisted.ensureDeferred
    async def test_project_missing(self, backend: BackendUnderTest) -> None:
        """An absent project fails with ProjectNotFound."""
        with pytest.raises(ProjectNotFound):
            await backend.projects.get(project_id("no/such-project"))

    @pytest_twisted.ensureDeferred
    async def test_non_project_secret(self, backend: BackendUnderTest) -> None:
        """A brigade-* Secret of another type is not a project."""
        await backend.seed(project_secret("acme/other", secret_type="Opaque"))
        with pytest.raises(ProjectNotFound):
            await backend.projects.get(project_id("acme/other"))

    @pytest_twisted.ensureDeferred
    async def test_build_stored_exactly(self, backend: BackendUnderTest) -> None:
        """A submitted build is stored as the contract's Secret, payload byte for byte."""
        build = a_build()
        receipt = await backend.builds.submit(build)
        assert receipt == Receipt("brigade-worker-01jgq8w4h0aaaaaaaaaaaaaaaa", duplicate=False)
        stored = await backend.stored(build.name)
        assert stored is not None
        expected = build_secret(build, backend.namespace)
        assert stored["type"] == "brigade.sh/build"
        assert stored["metadata"]["name"] == build.name
        assert stored["metadata"]["labels"] == expected["metadata"]["labels"]
        # Every key present; their order is not part of a Secret (the API
        # server returns map keys sorted, as Go encodes maps).
        assert sorted(stored["data"]) == sorted(BUILD_DATA_KEYS)
        assert stored["data"] == expected["data"]
        assert base64.b64decode(stored["data"]["payload"]) == b'{"x": "\xc3\xa9"}'

    @pytest_twisted.ensureDeferred
    async def test_duplicate_submit(self, backend: BackendUnderTest) -> None:
        """Submitting the same build twice stores it once and says duplicate."""
        build = a_build()
        await backend.builds.submit(build)
        receipt = await backend.builds.submit(build)
        assert receipt == Receipt(build.name, duplicate=True)

    @pytest_twisted.ensureDeferred
    async def test_same_event_other_bytes_is_duplicate(self, backend: BackendUnderTest) -> None:
        """
        The same build ID with another payload is the same event re-delivered
        (names derive from the event): a duplicate, and the first is kept.
        """
        await backend.builds.submit(a_build(payload=b"{}"))
        receipt = await backend.builds.submit(a_build(payload=b'{"deliveryAttempt": 2}'))
        assert receipt == Receipt(a_build().name, duplicate=True)
        stored = await backend.stored(a_build().name)
        assert stored is not None
        assert base64.b64decode(stored["data"]["payload"]) == b"{}"

    @pytest_twisted.ensureDeferred
    async def test_name_taken_by_another_event(self, backend: BackendUnderTest) -> None:
        """A Secret of that name standing for another event is a conflict, and is kept."""
        await backend.builds.submit(a_build(payload=b"{}"))
        with pytest.raises(BackendRejected):
            await backend.builds.submit(attrs.evolve(a_build(), event_type="image_delete"))
        stored = await backend.stored(a_build().name)
        assert stored is not None
        assert base64.b64decode(stored["data"]["event_type"]) == b"image_push"
