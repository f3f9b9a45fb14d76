"""The in-memory backend meets the backend contract."""

from __future__ import annotations

from typing import Any

import pytest

from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import BackendContract, BackendUnderTest


@pytest.fixture
def backend() -> BackendUnderTest:
    projects = MemoryProjects()
    builds = MemoryBuilds(namespace="brigade")

    async def seed(secret: dict[str, Any]) -> None:
        projects.add(secret)

    async def stored(name: str) -> dict[str, Any] | None:
        return builds.secrets.get(name)

    return BackendUnderTest(projects, builds, "brigade", seed, stored)


class TestMemoryBackend(BackendContract):
    """The contract, in memory."""
