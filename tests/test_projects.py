"""The project cache: fresh within the TTL, stale through an outage, persisted for restarts."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brigade_cr.brigade import project_id
from brigade_cr.errors import BackendUnavailable, ProjectNotFound
from brigade_cr.interfaces import IProjects
from brigade_cr.memory import MemoryProjects
from brigade_cr.projects import CachedProjects, load_store
from brigade_cr.values import Project
from tests.backend_contract import project_secret
from tests.helpers import failure_of, result_of

PID = project_id("acme/webapp")


@implementer(IProjects)
@attrs.define
class Counting:
    """Counts the lookups that reach the inner store."""

    inner: MemoryProjects
    calls: int = 0

    def get(self, project_id: str) -> Deferred[Project]:
        self.calls += 1
        return self.inner.get(project_id)


def run_now(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return succeed(function(*args))


def make(ttl: float = 30.0, store: Path | None = None) -> tuple[CachedProjects, Counting, Clock]:
    memory = MemoryProjects()
    memory.add(project_secret("acme/webapp", crGatewaySecret=b"one"))
    counting = Counting(memory)
    clock = Clock()
    clock.advance(1_000_000)
    cache = CachedProjects(counting, clock, ttl=ttl, store=store, run_blocking=run_now)
    cache.start()
    return cache, counting, clock


def test_provides_iprojects() -> None:
    """The cache is an IProjects."""
    cache, _, _ = make()
    assert verifyObject(IProjects, cache)


def test_fresh_within_ttl() -> None:
    """Within the TTL a project is served from memory."""
    cache, counting, clock = make()
    assert result_of(cache.get(PID)).cr_gateway_secret == b"one"
    clock.advance(5)
    assert result_of(cache.get(PID)).cr_gateway_secret == b"one"
    assert counting.calls == 1


def test_rekey_seen_within_ttl() -> None:
    """A project re-keyed while the API is up is seen within the TTL (by the background refresh)."""
    cache, counting, clock = make()
    result_of(cache.get(PID))
    counting.inner.add(project_secret("acme/webapp", crGatewaySecret=b"two"))
    for _ in range(3):
        clock.advance(10)
    assert result_of(cache.get(PID)).cr_gateway_secret == b"two"


def test_deleted_stops_within_ttl() -> None:
    """A project deleted while the API is up stops being accepted within the TTL."""
    cache, counting, clock = make()
    result_of(cache.get(PID))
    del counting.inner.secrets[PID]
    for _ in range(3):
        clock.advance(10)
    assert isinstance(failure_of(cache.get(PID)), ProjectNotFound)


def test_stale_through_outage() -> None:
    """While the API is down, the last known project is served, even hours later."""
    cache, counting, clock = make()
    result_of(cache.get(PID))
    counting.inner.down = True
    for _ in range(3600):
        clock.advance(10)
    assert result_of(cache.get(PID)).cr_gateway_secret == b"one"


def test_unknown_project_during_outage() -> None:
    """A project never seen cannot be served during an outage: BackendUnavailable."""
    cache, counting, _ = make()
    counting.inner.down = True
    assert isinstance(failure_of(cache.get(PID)), BackendUnavailable)


def test_recovery_after_outage() -> None:
    """After the outage a deletion made during it takes effect within the TTL."""
    cache, counting, clock = make()
    result_of(cache.get(PID))
    counting.inner.down = True
    clock.advance(100)
    del counting.inner.secrets[PID]
    counting.inner.down = False
    for _ in range(3):
        clock.advance(10)
    assert isinstance(failure_of(cache.get(PID)), ProjectNotFound)


def test_persisted_for_restart_during_outage(tmp_path: Path) -> None:
    """With a store, a restart during an outage still knows the project; the file is private."""
    store = tmp_path / "projects.json"
    cache, _, _ = make(store=store)
    result_of(cache.get(PID))
    # Saved as soon as it is first known, not at the next refresh.
    assert [p.id for p in load_store(store)] == [PID]
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    cache.stop()
    restarted, counting2, _ = make(store=store)
    counting2.inner.down = True
    assert result_of(restarted.get(PID)).cr_gateway_secret == b"one"


def test_corrupt_store_is_ignored(tmp_path: Path) -> None:
    """An unreadable store starts empty instead of failing."""
    store = tmp_path / "projects.json"
    store.write_text("{not json")
    assert load_store(store) == []


@pytest.mark.parametrize("ttl", [3.0, 30.0])
def test_refresh_interval(ttl: float) -> None:
    """The background refresh runs every third of the TTL, once per known project."""
    cache, counting, clock = make(ttl=ttl)
    result_of(cache.get(PID))
    clock.advance(ttl / 3)  # fetched ttl/3 ago: still fresh, not refreshed
    assert counting.calls == 1
    clock.advance(ttl / 3)  # now older than ttl/2: refreshed
    assert counting.calls == 2


def test_deleted_project_removed_from_store(tmp_path: Path) -> None:
    """A project found deleted is removed from the store too, so a restart does not revive it."""
    store = tmp_path / "projects.json"
    cache, counting, clock = make(store=store)
    result_of(cache.get(PID))
    del counting.inner.secrets[PID]
    for _ in range(3):
        clock.advance(10)
    assert load_store(store) == []
