"""
The in-memory project set (``KnownProjects``): answered from memory, waiting
only for the first sync, serving the last known set through an outage,
persisted for a restart during one. Its Kubernetes source is tested in
``test_kube_watch.py``; here a scripted source tells it what to know.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Callable, cast

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from zope.interface.verify import verifyObject

from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import BackendUnavailable, ProjectNotFound
from brigade_cr.core.interfaces import IProjects
from brigade_cr.core.values import Project
from brigade_cr.stores.projects import KnownProjects, load_store, save_store
from tests.helpers import failure_of, result_of

PID = project_id("acme/webapp")
OTHER = project_id("acme/other")
ONE = Project(PID, "acme/webapp", cr_gateway_secret=b"one-long-enough-secret")
TWO = Project(OTHER, "acme/other", cr_gateway_secret=b"two-long-enough-secret")


@attrs.define
class Source:
    """A ProjectSource the test drives by hand."""

    sink: Any = None
    started: int = 0
    stopped: int = 0

    def start(self, sink: Any) -> None:
        self.sink = sink
        self.started += 1

    def stop(self) -> None:
        self.stopped += 1


def run_now(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return succeed(function(*args))


def make(store: Path | None = None) -> tuple[KnownProjects, Source, Clock]:
    source = Source()
    clock = Clock()
    known = KnownProjects(source, clock, store=store, run_blocking=run_now)
    result_of(known.start())
    return known, source, clock


def test_provides_iprojects() -> None:
    known, _, _ = make()
    assert verifyObject(IProjects, known)


def test_in_sync_hit_and_miss_at_once() -> None:
    """In sync, a hit and a miss are both answered at once, from memory."""
    known, source, _ = make()
    source.sink.replace({PID: ONE})
    hit = known.get(PID)
    assert hit.called and result_of(hit) == ONE
    miss = known.get(OTHER)
    assert miss.called
    assert isinstance(failure_of(miss), ProjectNotFound)
    assert known.in_sync


def test_changes_take_effect_at_once() -> None:
    """A project added, re-keyed or deleted is answered accordingly as soon as the source tells."""
    known, source, _ = make()
    source.sink.replace({PID: ONE})
    source.sink.put(TWO)
    assert result_of(known.get(OTHER)) == TWO
    rekeyed = attrs.evolve(ONE, cr_gateway_secret=b"a-brand-new-secret-value")
    source.sink.put(rekeyed)
    assert result_of(known.get(PID)).cr_gateway_secret == b"a-brand-new-secret-value"
    source.sink.remove(PID)
    assert isinstance(failure_of(known.get(PID)), ProjectNotFound)
    source.sink.replace({})
    assert isinstance(failure_of(known.get(OTHER)), ProjectNotFound)
    assert known.known == frozenset()


def test_before_first_sync_waits_for_it() -> None:
    """A lookup before the first sync waits for it, then is answered from the list."""
    known, source, clock = make()
    assert known.not_ready() == "the projects have not been loaded yet (waiting for the first sync)"
    hit, miss = known.get(PID), known.get(OTHER)
    clock.advance(4.9)
    assert not hit.called and not miss.called
    source.sink.replace({PID: ONE})
    assert result_of(hit) == ONE
    assert isinstance(failure_of(miss), ProjectNotFound)
    assert known.not_ready() is None
    assert clock.getDelayedCalls() == []


def test_first_sync_wait_is_bounded() -> None:
    """With no first sync in 5 s, a lookup fails with BackendUnavailable (retry after 5 s)."""
    known, source, clock = make()
    waiting = known.get(PID)
    clock.advance(4.999)
    assert not waiting.called
    clock.advance(0.001)
    error = failure_of(waiting)
    assert isinstance(error, BackendUnavailable)
    assert (error.reason, error.retry_after) == ("the projects have not been loaded yet", 5)
    # A broken source with nothing loaded does not end the wait: the retry may still list.
    source.sink.broken("connection refused")
    waiting = known.get(PID)
    assert not waiting.called
    source.sink.replace({PID: ONE})
    assert result_of(waiting) == ONE


def test_outage_serves_last_known_set() -> None:
    """Through an outage the last known set is served; a miss is still a miss, at once."""
    known, source, _ = make()
    source.sink.replace({PID: ONE})
    source.sink.broken("Kubernetes API answered 503 ServiceUnavailable")
    assert not known.in_sync
    assert result_of(known.get(PID)) == ONE
    miss = known.get(OTHER)
    assert miss.called and isinstance(failure_of(miss), ProjectNotFound)
    assert known.not_ready() is None
    source.sink.replace({OTHER: TWO})
    assert known.in_sync
    assert isinstance(failure_of(known.get(PID)), ProjectNotFound)


def test_persisted_after_every_change(tmp_path: Path) -> None:
    """The set is saved after each change, privately, in the store format."""
    store = tmp_path / "projects.json"
    _known, source, _ = make(store)
    source.sink.replace({PID: ONE})
    assert load_store(store) == [ONE]
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    source.sink.put(TWO)
    assert load_store(store) == sorted([ONE, TWO], key=lambda p: p.id)
    source.sink.remove(PID)
    assert load_store(store) == [TWO]
    assert json.loads(store.read_text())["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["projects.json"]


def test_restart_during_outage_knows_the_projects(tmp_path: Path) -> None:
    """
    A restart with a persisted set is ready at once, serves its hits at
    once, and once the source reports it cannot list, answers misses at once too.
    """
    store = tmp_path / "projects.json"
    save_store(store, [ONE])
    known, source, _clock = make(store)
    assert known.not_ready() is None
    assert result_of(known.get(PID)) == ONE
    miss = known.get(OTHER)
    assert not miss.called  # the first list may still come and know it
    source.sink.broken("connection refused")
    assert isinstance(failure_of(miss), ProjectNotFound)
    assert isinstance(failure_of(known.get(OTHER)), ProjectNotFound)


def test_restart_with_persisted_set_first_sync_wins(tmp_path: Path) -> None:
    """The first list replaces the persisted set, and a miss waiting for it is answered by it."""
    store = tmp_path / "projects.json"
    save_store(store, [ONE])
    known, source, _clock = make(store)
    waiting = known.get(OTHER)
    source.sink.replace({OTHER: TWO})
    assert result_of(waiting) == TWO
    assert isinstance(failure_of(known.get(PID)), ProjectNotFound)
    assert load_store(store) == [TWO]


def test_persisted_set_answers_after_the_wait(tmp_path: Path) -> None:
    """With a persisted set and no word from the source, a waiting miss is a miss after 5 s."""
    store = tmp_path / "projects.json"
    save_store(store, [ONE])
    known, _, clock = make(store)
    waiting = known.get(OTHER)
    clock.advance(5)
    assert isinstance(failure_of(waiting), ProjectNotFound)


def test_corrupt_store_is_ignored(tmp_path: Path) -> None:
    """An unreadable store starts empty instead of failing: not ready until the first sync."""
    store = tmp_path / "projects.json"
    store.write_text("{not json")
    assert load_store(store) == []
    known, _, _ = make(store)
    assert known.not_ready() is not None


def test_stop_stops_the_source() -> None:
    known, source, _ = make()
    known.stop()
    assert (source.started, source.stopped) == (1, 1)


@pytest.fixture
def logged() -> Any:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(cast(ILogObserver, events.append))
    yield events
    globalLogPublisher.removeObserver(cast(ILogObserver, events.append))


def test_short_secret_warned_once(logged: list[LogEvent]) -> None:
    """A crGatewaySecret under 16 characters is warned about once per project, without the secret."""
    _known, source, _ = make()
    short = Project(PID, "acme/webapp", cr_gateway_secret=b"tiny-secret")
    source.sink.replace({PID: short})
    source.sink.replace({PID: short})
    source.sink.put(attrs.evolve(short, repository="github.com/acme/webapp"))
    warnings = [formatEvent(e) for e in logged if "shorter than" in (e.get("log_format") or "")]
    assert warnings == [f"Project {PID} has a crGatewaySecret shorter than 16 characters: use a longer, random one"]
    assert not any("tiny-secret" in formatEvent(e) for e in logged)


def test_source_broken_before_the_store_loads(tmp_path: Path) -> None:
    """
    The source starts first; if it reports it cannot list before the
    persisted set is read, the set is served (misses at once) as soon as it is.
    """
    store = tmp_path / "projects.json"
    save_store(store, [ONE])
    pending: list[tuple[Deferred[Any], Callable[..., Any], tuple[Any, ...]]] = []

    def later(function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append((d, function, args))
        return d

    source = Source()
    known = KnownProjects(source, Clock(), store=store, run_blocking=later)
    started = known.start()
    assert source.started == 1
    assert known.not_ready() is not None
    miss = known.get(OTHER)
    source.sink.broken("connection refused")
    assert not miss.called
    d, function, args = pending.pop()
    d.callback(function(*args))
    assert started.called
    assert known.not_ready() is None
    assert isinstance(failure_of(miss), ProjectNotFound)
    assert result_of(known.get(PID)) == ONE
