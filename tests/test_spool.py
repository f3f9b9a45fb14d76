"""
Tests for ``brigade_cr.stores.spool``: the shared backend contract, the record
format, outages simulated on a ``Clock``, dead letters, quarantine,
backpressure, shutdown, the directory lock, and a property: any sequence of
submits, outages and restarts creates each build exactly once, in order.

Most tests run the file I/O synchronously (``InlineIO``) on real files in a
temporary directory and drive time with a ``Clock``; the contract also runs
once with the real reactor and its thread pool.
"""

from __future__ import annotations

import base64
import errno
import inspect
import itertools
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

import attrs
import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock, deferLater
from twisted.logger import Logger, LogLevel, formatEvent
from zope.interface import implementer
from zope.interface.verify import verifyObject

from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.core.contract import build_secret, secret_data
from brigade_cr.core.errors import BackendRejected, BackendUnavailable, InvalidText
from brigade_cr.core.interfaces import IBuilds, IPacedBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.fileio import InlineIO, ThreadedIO
from brigade_cr.stores.retry import Backoff
from brigade_cr.stores.spool import (
    DEAD_LETTER,
    LOCK_FILE,
    MAX_ATTEMPTS,
    MAX_IN_FLIGHT,
    QUARANTINE,
    CorruptRecord,
    SpooledBuilds,
    SpoolLocked,
    SpoolStats,
    batch_filename,
    decode_record,
    encode_record,
    parse_record_filename,
    read_record,
    record_filename,
)
from brigade_cr.stores.spool import disk as spool_disk
from brigade_cr.stores.spool import record as spool_record
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import BackendContract, BackendUnderTest, a_build
from tests.helpers import failure_of, result_of, spool_records

MARKER = b"payload-marker-never-logged"


def build_no(number: int) -> Build:
    """Build ``number``: its own ULID, and a payload with bytes that are not UTF-8."""
    return a_build(ulid=f"01jgq8w4h0{number:016d}", payload=b'{"n": %d, "m": "%s"}\xff\x00\x80' % (number, MARKER))


# What the field case choked on: a lone surrogate. It is the exception's
# message ("... '\udc80' in position 6: surrogates not allowed") that must never
# reach a dead letter's reason file.
POISON_TEXT = "poison\udc80"


def encode_field(text: str) -> bytes:
    """The innermost frame of a poisoned submit: the line every dead letter's traceback ends at."""
    return text.encode("utf-8")


def line_of(function: Callable[..., Any], text: str) -> int:
    """The number of the one line of ``function`` holding ``text``."""
    lines, first = inspect.getsourcelines(function)
    found = [first + index for index, line in enumerate(lines) if text in line]
    assert len(found) == 1, found
    return found[0]


ENCODE_LINE = line_of(encode_field, 'text.encode("utf-8")')


def fixed(value: float) -> Backoff:
    return Backoff(random=lambda: value)


@implementer(IBuilds)
@attrs.define
class ApiBuilds:
    """
    The Kubernetes API as the spool sees it: a ``MemoryBuilds`` that can be
    down (with a Retry-After), refuse chosen builds, answer after a delay,
    raise a surprise, and choke on chosen builds every time (``poison``: a
    ``UnicodeEncodeError`` from deep in its "client", as the Kubernetes
    client raised on a lone surrogate). Notes every call and every creation.
    """

    clock: Clock
    store: MemoryBuilds = attrs.field(factory=lambda: MemoryBuilds(namespace="brigade"))
    down: bool = False
    retry_after: int | None = None
    rejects: set[str] = attrs.field(factory=set)
    latency: float = 0.0
    surprises: int = 0
    poison: set[str] = attrs.field(factory=set)
    calls: list[tuple[float, str]] = attrs.field(factory=list)
    created: list[str] = attrs.field(factory=list)

    def submit(self, build: Build) -> Deferred[Receipt]:
        self.calls.append((self.clock.seconds(), build.name))
        if self.latency:
            return deferLater(self.clock, self.latency, self._answer, build).addCallback(lambda d: d)
        return self._answer(build)

    def _answer(self, build: Build) -> Deferred[Receipt]:
        if self.surprises:
            self.surprises -= 1
            return fail(RuntimeError("surprise"))
        if build.name in self.poison:
            encode_field(POISON_TEXT)
        if self.down:
            return fail(BackendUnavailable("API down", self.retry_after))
        if build.name in self.rejects:
            return fail(BackendRejected("422 Unprocessable Entity"))
        d = self.store.submit(build)

        def note(receipt: Receipt) -> Receipt:
            if not receipt.duplicate:
                self.created.append(build.name)
            return receipt

        return d.addCallback(note)

    def payload(self, name: str) -> bytes:
        return secret_data(self.store.secrets[name])["payload"]


@attrs.define
class ManualIO:
    """A BlockingIO whose calls run only when the test says so, to order them at will."""

    pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = attrs.field(factory=list)

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((function, args, d))
        return d

    def names(self) -> list[str]:
        return [function.__name__ for function, _, _ in self.pending]

    def complete(self, index: int = 0) -> None:
        function, args, d = self.pending.pop(index)
        try:
            result = function(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def complete_all(self) -> None:
        while self.pending:
            self.complete(0)


def advance_to(clock: Clock, when: float) -> None:
    """Run every delayed call due by ``when``, each at its own time, then set the clock to ``when``."""
    while True:
        due = [call.getTime() for call in clock.getDelayedCalls() if call.getTime() <= when]
        if not due:
            break
        clock.advance(max(0.0, min(due) - clock.seconds()))
    clock.advance(max(0.0, when - clock.seconds()))


def drain(spool: SpooledBuilds, clock: Clock, steps: int = 1000) -> None:
    """Run delayed calls, in time order, until the spool holds nothing (bounded)."""
    for _ in range(steps):
        if spool.stats().queued == 0:
            return
        calls = clock.getDelayedCalls()
        assert calls, "the spool holds records but nothing is scheduled"
        clock.advance(max(0.0, min(call.getTime() for call in calls) - clock.seconds()))
    raise AssertionError("the spool did not drain")


def records(directory: Path) -> list[str]:
    """The build names of the records in ``directory`` (in record files and batch files), in their order."""
    return [name for _, name, _ in spool_records(directory)]


def stop(spool: SpooledBuilds, clock: Clock, deadline: float = 0.0) -> None:
    d = spool.stop(deadline)
    advance_to(clock, clock.seconds() + deadline)
    assert result_of(d) is None


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def api(clock: Clock) -> ApiBuilds:
    return ApiBuilds(clock)


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "spool"


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every event the spool logs."""
    captured: list[dict[str, Any]] = []
    observer: Any = captured.append
    monkeypatch.setattr(SpooledBuilds, "log", Logger(observer=observer))
    return captured


def new_spool(directory: Path, api: Any, clock: Clock, **changes: Any) -> SpooledBuilds:
    settings: dict[str, Any] = {"io": InlineIO(), "backoff": fixed(0.0)}
    settings.update(changes)
    return SpooledBuilds(directory, api, clock, **settings)


def started_on_manual_io(directory: Path, inner: Any, clock: Clock, **changes: Any) -> tuple[SpooledBuilds, ManualIO]:
    """A spool over ``inner`` on a ``ManualIO``, started (its recovery step run)."""
    io = ManualIO()
    spool = new_spool(directory, inner, clock, io=io, **changes)
    started = spool.start()
    io.complete()
    result_of(started)
    return spool, io


@pytest.fixture
def make(directory: Path, api: ApiBuilds, clock: Clock) -> Iterator[Callable[..., SpooledBuilds]]:
    """Start spools on ``directory`` (stopped at the end of the test, releasing the lock)."""
    made: list[SpooledBuilds] = []

    def start(**changes: Any) -> SpooledBuilds:
        spool = new_spool(directory, changes.pop("inner", api), clock, **changes)
        result_of(spool.start())
        made.append(spool)
        return spool

    yield start
    for spool in made:
        spool.stop(0)
    clock.advance(0)


def assert_never_logged_payload(events: list[dict[str, Any]]) -> None:
    for event in events:
        assert MARKER.decode() not in formatEvent(event)
        for key, value in event.items():
            assert MARKER.decode() not in repr(value), key


# -- the shared contract ---------------------------------------------------------------


def contract_backend(spool: SpooledBuilds, memory: MemoryBuilds) -> BackendUnderTest:
    projects = MemoryProjects()

    async def seed(secret: dict[str, Any]) -> None:
        projects.add(secret)

    async def stored(name: str) -> dict[str, Any] | None:
        return memory.secrets.get(name)

    return BackendUnderTest(projects, spool, "brigade", seed, stored)


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[BackendUnderTest]:
    clock = Clock()
    memory = MemoryBuilds(namespace="brigade")
    spool = new_spool(tmp_path / "spool", memory, clock)
    result_of(spool.start())
    yield contract_backend(spool, memory)
    d = spool.stop(0)
    clock.advance(0)
    result_of(d)


class TestSpooledBuilds(BackendContract):
    """The contract, through a spool in front of MemoryBuilds (synchronous file I/O)."""


class TestSpooledBuildsThreaded(BackendContract):
    """The contract, through a spool doing its file I/O in the real reactor's thread pool."""

    @pytest_twisted.async_yield_fixture
    async def backend(self, tmp_path: Path) -> AsyncIterator[BackendUnderTest]:
        from twisted.internet import reactor as global_reactor

        reactor: Any = global_reactor
        memory = MemoryBuilds(namespace="brigade")
        spool = SpooledBuilds(tmp_path / "spool", memory, reactor, ThreadedIO(reactor, reactor.getThreadPool()))
        await spool.start().addTimeout(10, reactor)
        try:
            yield contract_backend(spool, memory)
        finally:
            await spool.stop(5).addTimeout(10, reactor)
        assert records(tmp_path / "spool") == []


def test_provides_ibuilds(make: Callable[..., SpooledBuilds]) -> None:
    """A SpooledBuilds is an IBuilds."""
    assert verifyObject(IBuilds, make())


# -- the record format -------------------------------------------------------------------


def test_record_round_trip() -> None:
    """A record gives back the very build, payload byte for byte."""
    build = attrs.evolve(build_no(1), script="s\u00e9", config="{}", log_level="debug", commit_id="abc")
    assert decode_record(encode_record(build)) == build


# Any text a Build can hold: every code point but the lone surrogates, which
# no Build accepts (tests/test_values.py), so no record can carry one.
text = st.text(st.characters(codec=None, exclude_categories=["Cs"]))


@given(
    payload=st.binary(max_size=2048),
    fields=st.fixed_dictionaries(
        {
            name: text
            for name in (
                "project_id",
                "event_type",
                "event_provider",
                "commit_ref",
                "short_title",
                "long_title",
                "commit_id",
                "clone_url",
                "log_level",
                "script",
                "config",
            )
        }
    ),
)
def test_record_round_trip_any_build(payload: bytes, fields: dict[str, str]) -> None:
    """Any text in any field and any payload bytes come back exactly."""
    build = Build(ulid="01jgq8w4h0aaaaaaaaaaaaaaaa", payload=payload, **fields)
    assert decode_record(encode_record(build), build.name) == build


def test_record_layout() -> None:
    """A record is one header line (version, length, sha256) and a JSON body with the payload in base64."""
    build = build_no(2)
    record = encode_record(build)
    header, body = record.split(b"\n", 1)
    meta = json.loads(header)
    assert sorted(meta) == ["length", "sha256", "v"]
    assert meta["v"] == 1
    assert meta["length"] == len(body)
    fields = json.loads(body)
    assert base64.b64decode(fields["payload"]) == build.payload
    assert fields["ulid"] == build.ulid


def test_every_bit_flip_is_detected() -> None:
    """Flipping any single bit of a record, header or body, makes it corrupt."""
    record = encode_record(a_build(payload=b"{}"))
    for index in range(len(record)):
        for bit in range(8):
            damaged = bytearray(record)
            damaged[index] ^= 1 << bit
            with pytest.raises(CorruptRecord):
                decode_record(bytes(damaged), a_build().name)


def test_every_truncation_is_detected() -> None:
    """A record cut short anywhere, down to nothing, is corrupt; so is one with bytes added."""
    record = encode_record(build_no(3))
    for length in range(len(record)):
        with pytest.raises(CorruptRecord):
            decode_record(record[:length])
    with pytest.raises(CorruptRecord):
        decode_record(record + b"\n")


def test_record_of_another_build_is_corrupt() -> None:
    """A record whose build is not the one its file name says is corrupt."""
    with pytest.raises(CorruptRecord):
        decode_record(encode_record(build_no(1)), build_no(2).name)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"ulid": "01jgq8w4h0aaaaaaaaaaaaaaaa"}',
        b'{"project_id":"p","ulid":"u","event_type":"e","event_provider":"p","commit_ref":"c","payload":"!!"}',
        b'{"project_id":"p","ulid":"u","event_type":"e","event_provider":"p","commit_ref":"c","payload":"","new":"x"}',
        b'{"project_id":1,"ulid":"u","event_type":"e","event_provider":"p","commit_ref":"c","payload":""}',
    ],
)
def test_record_with_wrong_body_is_corrupt(body: bytes) -> None:
    """A correctly checksummed body that is not a build (or has fields this version does not know) is corrupt."""
    import hashlib

    header = json.dumps({"v": 1, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode()
    with pytest.raises(CorruptRecord):
        decode_record(header + b"\n" + body)


def test_unknown_version_is_corrupt() -> None:
    """A record of another version is not read as version 1."""
    header, body = encode_record(build_no(1)).split(b"\n", 1)
    meta = json.loads(header)
    meta["v"] = 2
    with pytest.raises(CorruptRecord):
        decode_record(json.dumps(meta).encode() + b"\n" + body)


def test_record_file_names() -> None:
    """Record names sort by sequence number and give back the build name; other names are not records."""
    name = build_no(1).name
    assert record_filename(42, name) == f"00000000000000000042.{name}.build"
    assert parse_record_filename(record_filename(42, name)) == (42, name)
    for other in ("projects.json", LOCK_FILE, f".00000000000000000042.{name}.build.tmp", "42.x.build", "notes.txt"):
        assert parse_record_filename(other) is None


# -- submitting and draining ------------------------------------------------------------------


def test_created_at_once_when_inner_is_up(make: Callable[..., SpooledBuilds], api: ApiBuilds, directory: Path) -> None:
    """With the API up the receipt says created (not queued) and the record is gone."""
    spool = make()
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name)
    assert api.created == [build_no(1).name]
    assert api.payload(build_no(1).name) == build_no(1).payload
    assert records(directory) == []
    assert spool.stats() == SpoolStats(
        queued=0, queued_bytes=0, created=1, duplicates=0, dead_lettered=0, quarantined=0, discarded=0, accepting=True
    )


def test_queued_while_down_then_drained_in_order(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    While the API is down every submit is answered queued at once and its
    record kept; once it is back, the records become builds in the order
    they were accepted, each exactly once, each payload exact.
    """
    api.down = True
    spool = make()
    builds = [build_no(n) for n in range(5)]
    names = [build.name for build in builds]
    for build in builds:
        assert result_of(spool.submit(build)) == Receipt(build.name, queued=True)
    assert records(directory) == names
    assert spool.stats().queued == 5
    assert spool.accepting()
    api.down = False
    advance_to(clock, 0.25)
    assert api.created == names
    assert [api.payload(name) for name in names] == [build.payload for build in builds]
    # One failed attempt at 0, then each build once at 0.25 s.
    assert api.calls == [(0.0, names[0])] + [(0.25, name) for name in names]
    assert records(directory) == []
    assert spool.stats().created == 5


def test_long_outage(make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock) -> None:
    """
    Three hours of outage, simulated: retries back off 0.5, 1, 2, ... s and
    then every 30 s (the cap), never faster; builds accepted during the
    outage are all created afterwards, in order, once each.
    """
    api.down = True
    spool = make(backoff=fixed(1.0))
    names = []
    for n in range(100):
        advance_to(clock, n * 100.0)
        build = build_no(n)
        names.append(build.name)
        assert result_of(spool.submit(build)) == Receipt(build.name, queued=True)
    advance_to(clock, 3 * 3600.0)
    times = [when for when, _ in api.calls]
    assert times[:8] == [0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5]
    assert all(later - earlier == pytest.approx(30.0) for earlier, later in itertools.pairwise(times[6:]))
    # 7 attempts up to 31.5 s, then one every 30 s up to 10800 s.
    assert len(api.calls) == 7 + 358
    assert {name for _, name in api.calls} == {names[0]}
    api.down = False
    advance_to(clock, 3 * 3600.0 + 30.0)
    assert api.created == names
    assert spool.stats().queued == 0


@pytest.mark.parametrize(("retry_after", "interval"), [(120, 120.0), (3600, 300.0)])
def test_outage_honours_retry_after(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, retry_after: int, interval: float
) -> None:
    """The drainer waits what the server asks (Retry-After), up to 300 s."""
    api.down = True
    api.retry_after = retry_after
    spool = make()
    spool.submit(build_no(1))
    advance_to(clock, 1000.0)
    times = [when for when, _ in api.calls]
    assert times == [interval * n for n in range(int(1000 // interval) + 1)]


def test_duplicate_while_queued(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """A re-delivery of a queued build is answered duplicate and queued, with no second record."""
    api.down = True
    spool = make()
    first = result_of(spool.submit(build_no(1)))
    again = result_of(spool.submit(build_no(1)))
    assert first == Receipt(build_no(1).name, queued=True)
    assert again == Receipt(build_no(1).name, duplicate=True, queued=True)
    assert records(directory) == [build_no(1).name]
    api.down = False
    drain(spool, clock)
    assert api.created == [build_no(1).name]


def test_duplicate_after_created(make: Callable[..., SpooledBuilds], api: ApiBuilds) -> None:
    """A re-delivery of a build that exists is passed to inner, which says duplicate: still one build."""
    spool = make()
    result_of(spool.submit(build_no(1)))
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name, duplicate=True)
    assert api.created == [build_no(1).name]
    assert spool.stats().duplicates == 1


def test_duplicate_while_first_is_being_written(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """A re-delivery during the first write waits for it, then is answered duplicate and queued."""
    spool, io = started_on_manual_io(directory, api, clock)
    api.down = True
    first = spool.submit(build_no(1))
    again = spool.submit(build_no(1))
    assert io.names() == ["write_records"]
    assert not again.called
    io.complete()  # the write; the record is handed over at once, without reading it back
    assert io.names() == []
    assert result_of(first) == Receipt(build_no(1).name, queued=True)
    assert result_of(again) == Receipt(build_no(1).name, duplicate=True, queued=True)
    assert records(directory) == [build_no(1).name]
    stop(spool, clock)


def test_duplicate_of_a_failed_write_fails_too(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """If the first write fails, a re-delivery that waited for it is refused too (no 2xx without a record)."""
    io = ManualIO()

    def no_space(step: str) -> None:
        if step == "write:temp-written":
            raise OSError(errno.ENOSPC, "No space left on device")

    spool = new_spool(directory, api, clock, io=io, at_step=no_space)
    started = spool.start()
    io.complete()
    result_of(started)
    first = spool.submit(build_no(1))
    again = spool.submit(build_no(1))
    io.complete()
    assert isinstance(failure_of(first), BackendUnavailable)
    assert isinstance(failure_of(again), BackendUnavailable)
    assert records(directory) == []
    stop(spool, clock)


def test_concurrent_writes_share_one_batch(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    Group commit: records submitted while a write is in progress (the one
    write slot busy) wait for it and then go to disk together, in one call
    (one directory fsync); each is answered once its own batch is durable,
    and handed over at once.
    """
    spool, io = started_on_manual_io(directory, api, clock, write_concurrency=1)
    first = spool.submit(build_no(1))
    second = spool.submit(build_no(2))
    third = spool.submit(build_no(3))
    assert io.names() == ["write_records"]
    assert [len(args[1]) for _, args, _ in io.pending] == [1]
    io.complete()  # the first batch: build 1 alone
    assert records(directory) == [build_no(1).name]
    assert api.created == [build_no(1).name]
    assert result_of(first) == Receipt(build_no(1).name)  # answered once the build exists
    # Build 1's removal was asked for before the next write batch started.
    assert io.names() == ["remove_records", "write_records"]
    assert [len(args[1]) for _, args, _ in io.pending] == [1, 2]
    assert not second.called and not third.called
    io.complete(1)  # builds 2 and 3 together
    assert records(directory) == [build_no(1).name, build_no(2).name, build_no(3).name]
    # Two slots remained: both handed over at once, neither read back.
    assert api.created == [build_no(1).name, build_no(2).name, build_no(3).name]
    assert result_of(second) == Receipt(build_no(2).name)
    assert result_of(third) == Receipt(build_no(3).name)
    assert io.names() == ["remove_records"]  # build 1's; 2's and 3's wait to go together
    io.complete()
    # Builds 2 and 3 share one batch file: one removal, of that file.
    assert [args[1] for _, args, _ in io.pending] == [[batch_filename(2)]]
    io.complete()
    assert records(directory) == []
    assert os.listdir(directory) == [LOCK_FILE]
    assert spool.stats().queued == 0
    stop(spool, clock)


def test_write_batches_run_side_by_side_up_to_the_write_concurrency(
    api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    With two write slots, two records are written at once, each in its own
    batch; the third waits for a slot and goes with those after it in one
    batch. A batch that finishes first is answered first, whatever the
    sequence: each record's answer waits for its own batch alone.
    """
    spool, io = started_on_manual_io(directory, api, clock, write_concurrency=2)
    first, second = spool.submit(build_no(1)), spool.submit(build_no(2))
    assert io.names() == ["write_records", "write_records"]
    assert [len(args[1]) for _, args, _ in io.pending] == [1, 1]
    later = [spool.submit(build_no(n)) for n in (3, 4)]
    assert len(io.pending) == 2  # both slots busy: 3 and 4 wait
    io.complete(1)  # build 2's batch finishes before build 1's
    assert records(directory) == [build_no(2).name]
    assert result_of(second) == Receipt(build_no(2).name)
    assert not first.called
    writes = [args[1] for function, args, _ in io.pending if function.__name__ == "write_records"]
    assert [[filename for filename, _ in batch] for batch in writes] == [
        [record_filename(1, build_no(1).name)],
        [record_filename(3, build_no(3).name), record_filename(4, build_no(4).name)],
    ]
    io.complete_all()
    assert result_of(first) == Receipt(build_no(1).name)
    assert [result_of(d) for d in later] == [Receipt(build_no(3).name), Receipt(build_no(4).name)]
    assert sorted(api.created) == [build_no(n).name for n in (1, 2, 3, 4)]
    drain(spool, clock)
    assert records(directory) == []
    stop(spool, clock)


def test_a_record_behind_others_is_answered_queued_at_once(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    No fixed wait under load: a record that cannot be handed over the moment
    it is durable (every slot busy) is answered queued then, not after
    ``ack_wait``; those handed over at once wait for their builds.
    """
    api.latency = 0.5
    spool, io = started_on_manual_io(directory, api, clock, max_in_flight=2, write_concurrency=1)
    answers = [spool.submit(build_no(n)) for n in (1, 2, 3)]
    io.complete()  # build 1
    io.complete()  # builds 2 and 3 together (one write slot)
    assert io.names() == []  # nothing read back: 1 and 2 went to the API from memory
    assert [d.called for d in answers] == [False, False, True]
    assert result_of(answers[2]) == Receipt(build_no(3).name, queued=True)
    assert [name for _, name in api.calls] == [build_no(1).name, build_no(2).name]
    advance_to(clock, 0.5)
    assert result_of(answers[0]) == Receipt(build_no(1).name)
    assert result_of(answers[1]) == Receipt(build_no(2).name)
    # Build 1's removal; build 2 shares a batch file with build 3, which
    # stays until 3 is handed over too, so 2's slot is free at once and
    # build 3 is read back from disk for its turn.
    assert io.names() == ["remove_records", "read_records"]
    io.complete(1)
    assert [name for _, name in api.calls] == [build_no(1).name, build_no(2).name, build_no(3).name]
    advance_to(clock, 1.0)
    io.complete_all()
    io.complete_all()
    assert api.created == [build_no(1).name, build_no(2).name, build_no(3).name]
    assert records(directory) == []
    stop(spool, clock)


def test_slow_inner_answers_queued_after_ack_wait(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock
) -> None:
    """An API slower than ack_wait: the sender gets queued at 1 s; the build is created at 5 s."""
    api.latency = 5.0
    spool = make()
    d = spool.submit(build_no(1))
    advance_to(clock, 0.99)
    assert not d.called
    advance_to(clock, 1.0)
    assert result_of(d) == Receipt(build_no(1).name, queued=True)
    assert api.created == []
    advance_to(clock, 5.0)
    assert api.created == [build_no(1).name]
    assert spool.stats().queued == 0


def test_unexpected_error_is_retried(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, events: list[dict[str, Any]]
) -> None:
    """A surprise from inner is logged with its traceback and treated as transient: the build is not lost."""
    api.surprises = 1
    spool = make()
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name, queued=True)
    drain(spool, clock)
    assert api.created == [build_no(1).name]
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)


def test_drainer_survives_its_own_errors(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, events: list[dict[str, Any]]
) -> None:
    """An unexpected error inside the drainer is logged, and draining carries on after a pause: nothing is lost."""
    broken = {"drain:submitted"}

    def bug(step: str) -> None:
        if step in broken:
            broken.discard(step)
            raise RuntimeError("bug")

    spool = make(at_step=bug)
    d = spool.submit(build_no(1))
    spool.submit(build_no(2))
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(2).name]
    assert result_of(d) == Receipt(build_no(1).name, duplicate=True)
    assert spool.stats().queued == 0
    assert [event["log_failure"].value.args for event in events if "log_failure" in event] == [("bug",)]


def test_record_vanished_while_queued(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """A record removed behind the spool's back is logged and skipped; the next one is still created."""
    api.down = True
    spool = make()
    # The drainer has read the first record already (and retries from
    # memory); the second and third wait on disk.
    for n in (1, 2, 3):
        spool.submit(build_no(n))
    (directory / record_filename(2, build_no(2).name)).unlink()
    api.down = False
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(3).name]


# -- dead letters and quarantine -----------------------------------------------------------------


def test_dead_letter(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """
    A build the API refuses for good is parked in dead-letter/ beside a
    reason file, counted and logged once (without its payload); the sender
    still waiting learns the truth; the builds after it are created.
    """
    refused = build_no(2)
    api.rejects.add(refused.name)
    spool = make()
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name)
    error = failure_of(spool.submit(refused))
    assert isinstance(error, BackendRejected)
    assert error.reason == "422 Unprocessable Entity"
    assert result_of(spool.submit(build_no(3))) == Receipt(build_no(3).name)
    assert api.created == [build_no(1).name, build_no(3).name]
    parked = directory / DEAD_LETTER / record_filename(2, refused.name)
    assert decode_record(parked.read_bytes(), refused.name) == refused
    reason = json.loads((directory / DEAD_LETTER / (parked.name + ".reason.json")).read_text())
    assert reason == {
        "build": refused.name,
        "event_provider": "dockerhub",
        "event_type": "image_push",
        "project": refused.project_id,
        "reason": "422 Unprocessable Entity",
        "record": parked.name,
        "time": "1970-01-01T00:00:00+00:00",
    }
    assert records(directory) == []
    assert spool.stats().dead_lettered == 1
    errors = [event for event in events if event["log_level"] is LogLevel.error]
    assert len(errors) == 1
    assert errors[0]["build"] == refused.name
    assert_never_logged_payload(events)


def test_dead_letter_after_queued_receipt(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """A build answered queued during an outage and refused afterwards is dead-lettered, not lost or retried forever."""
    api.down = True
    api.rejects.add(build_no(1).name)
    spool = make()
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name, queued=True)
    api.down = False
    drain(spool, clock)
    assert sorted(os.listdir(directory / DEAD_LETTER)) == [
        record_filename(1, build_no(1).name),
        record_filename(1, build_no(1).name) + ".reason.json",
    ]
    assert len(api.calls) == 2


def test_quarantine_at_start(
    api: ApiBuilds, clock: Clock, directory: Path, make: Callable[..., SpooledBuilds], events: list[dict[str, Any]]
) -> None:
    """
    At start a record with a flipped bit and a truncated record are moved to
    quarantine/ with a reason and counted; the good records are drained, in
    order; files that are not the spool's are left alone.
    """
    api.down = True
    first = new_spool(directory, api, clock)
    result_of(first.start())
    for n in range(4):
        first.submit(build_no(n))
    stop(first, clock)
    flipped = directory / record_filename(2, build_no(1).name)
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0x01
    flipped.write_bytes(bytes(data))
    truncated = directory / record_filename(3, build_no(2).name)
    truncated.write_bytes(truncated.read_bytes()[:-10])
    (directory / "projects.json").write_text("{}")
    (directory / "README").write_text("operator notes")
    api.down = False
    spool = make()
    assert sorted(os.listdir(directory / QUARANTINE)) == sorted(
        [flipped.name, flipped.name + ".reason.json", truncated.name, truncated.name + ".reason.json"]
    )
    assert json.loads((directory / QUARANTINE / (flipped.name + ".reason.json")).read_text())["reason"] == (
        "checksum mismatch"
    )
    body_length = len(encode_record(build_no(2)).split(b"\n", 1)[1])
    assert json.loads((directory / QUARANTINE / (truncated.name + ".reason.json")).read_text())["reason"] == (
        f"body is {body_length - 10} bytes where the header says {body_length}"
    )
    assert spool.stats().quarantined == 2
    drain(spool, clock)
    assert api.created == [build_no(0).name, build_no(3).name]
    assert sorted(os.listdir(directory)) == sorted([LOCK_FILE, QUARANTINE, "projects.json", "README"])
    assert (directory / "projects.json").read_text() == "{}"
    assert len([event for event in events if event["log_level"] is LogLevel.error]) == 2


def test_unreadable_record_at_start(
    api: ApiBuilds, clock: Clock, directory: Path, make: Callable[..., SpooledBuilds], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record the disk cannot read (EIO) is quarantined at start rather than keeping the spool from starting."""
    api.down = True
    first = new_spool(directory, api, clock)
    result_of(first.start())
    first.submit(build_no(1))
    first.submit(build_no(2))
    stop(first, clock)
    bad = record_filename(1, build_no(1).name)
    read_bytes = Path.read_bytes

    def failing_read(path: Path) -> bytes:
        if path.name == bad:
            raise OSError(errno.EIO, "Input/output error")
        return read_bytes(path)

    monkeypatch.setattr(Path, "read_bytes", failing_read)
    api.down = False
    spool = make()
    monkeypatch.undo()
    drain(spool, clock)
    assert api.created == [build_no(2).name]
    reason = json.loads((directory / QUARANTINE / (bad + ".reason.json")).read_text())
    assert reason["reason"] == "unreadable: Input/output error"


def test_damaged_while_queued(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """A record damaged after it was written is quarantined when the drainer reads it."""
    api.down = True
    spool = make()
    for n in (1, 2, 3):
        spool.submit(build_no(n))
    (directory / record_filename(2, build_no(2).name)).write_bytes(b"garbage")
    api.down = False
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(3).name]
    assert spool.stats().quarantined == 1
    assert (directory / QUARANTINE / record_filename(2, build_no(2).name)).read_bytes() == b"garbage"


def test_temporary_files_discarded_at_start(
    api: ApiBuilds, clock: Clock, directory: Path, make: Callable[..., SpooledBuilds]
) -> None:
    """Half-written records are deleted at start (their senders were never answered); others' temp files stay."""
    directory.mkdir()
    half = directory / f".{record_filename(7, build_no(7).name)}.tmp"
    half.write_bytes(encode_record(build_no(7))[:20])
    other = directory / ".projects.json.tmp"
    other.write_text("{")
    spool = make()
    assert not half.exists()
    assert other.exists()
    assert spool.stats().discarded == 1
    assert api.calls == []


# -- backpressure -------------------------------------------------------------------------------


def test_full_by_count(make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """At max_records the spool refuses (BackendUnavailable, Retry-After) and is not ready; draining frees it."""
    api.down = True
    spool = make(max_records=3)
    for n in range(3):
        result_of(spool.submit(build_no(n)))
    assert not spool.accepting()
    error = failure_of(spool.submit(build_no(3)))
    assert isinstance(error, BackendUnavailable)
    assert error.retry_after == 30
    assert records(directory) == [build_no(n).name for n in range(3)]
    api.down = False
    drain(spool, clock)
    assert spool.accepting()
    assert result_of(spool.submit(build_no(3))) == Receipt(build_no(3).name)


def test_full_by_bytes(make: Callable[..., SpooledBuilds], api: ApiBuilds, directory: Path) -> None:
    """A record that would take the spool past max_bytes is refused; the ones before it are kept."""
    api.down = True
    size = len(encode_record(build_no(1)))
    spool = make(max_bytes=2 * size + size // 2)
    result_of(spool.submit(build_no(1)))
    result_of(spool.submit(build_no(2)))
    assert spool.accepting()
    error = failure_of(spool.submit(build_no(3)))
    assert isinstance(error, BackendUnavailable)
    assert error.retry_after == 30
    assert spool.stats().queued_bytes == 2 * size
    assert records(directory) == [build_no(1).name, build_no(2).name]


def test_write_failure_refuses_and_recovers(make: Callable[..., SpooledBuilds], directory: Path) -> None:
    """
    A write that fails (disk full) is refused with BackendUnavailable, leaves
    no file behind and makes the spool not ready, until a write succeeds.
    """
    failures = {"write:temp-written"}

    def disk_full(step: str) -> None:
        if step in failures:
            failures.discard(step)
            raise OSError(errno.ENOSPC, "No space left on device")

    spool = make(at_step=disk_full)
    error = failure_of(spool.submit(build_no(1)))
    assert isinstance(error, BackendUnavailable)
    assert error.reason == "cannot write to the spool: No space left on device"
    assert error.retry_after == 30
    assert not spool.accepting()
    assert sorted(os.listdir(directory)) == [LOCK_FILE]
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name)
    assert spool.accepting()


@pytest.mark.parametrize("step", ["write:start", "write:temp-fsynced", "write:renamed", "write:dir-fsynced"])
def test_write_failure_at_any_step_leaves_nothing(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, directory: Path, step: str
) -> None:
    """Whatever step of the write fails, the sender is refused and no record or temporary file remains."""

    def failing(at: str) -> None:
        if at == step:
            raise OSError(errno.EIO, "Input/output error")

    spool = make(at_step=failing)
    assert isinstance(failure_of(spool.submit(build_no(1))), BackendUnavailable)
    assert sorted(os.listdir(directory)) == [LOCK_FILE]
    assert api.calls == []


def test_unwritable_directory(make: Callable[..., SpooledBuilds], directory: Path, tmp_path: Path) -> None:
    """A spool directory that became unusable (here: replaced by a file) refuses with BackendUnavailable."""
    spool = make()
    directory.rename(tmp_path / "moved")
    directory.write_text("not a directory")
    error = failure_of(spool.submit(build_no(1)))
    assert isinstance(error, BackendUnavailable)
    assert not spool.accepting()


def test_probe_restores_readiness(
    make: Callable[..., SpooledBuilds], clock: Clock, directory: Path, tmp_path: Path
) -> None:
    """
    After a failed write the spool tests the directory every 5 s and is
    ready again once it is writable, without waiting for traffic (which an
    unready pod would not get).
    """
    spool = make()
    directory.rename(tmp_path / "moved")
    directory.write_text("not a directory")
    assert isinstance(failure_of(spool.submit(build_no(1))), BackendUnavailable)
    assert not spool.accepting()
    advance_to(clock, 5.0)
    assert not spool.accepting()
    directory.unlink()
    (tmp_path / "moved").rename(directory)
    advance_to(clock, 9.9)
    assert not spool.accepting()
    advance_to(clock, 10.0)
    assert spool.accepting()
    assert clock.getDelayedCalls() == []
    assert sorted(os.listdir(directory)) == [LOCK_FILE]


def test_start_on_a_file_fails(api: ApiBuilds, clock: Clock, tmp_path: Path) -> None:
    """A spool path that is a file fails start() with OSError; the spool stays not ready."""
    path = tmp_path / "file"
    path.write_text("")
    spool = new_spool(path, api, clock)
    assert isinstance(failure_of(spool.start()), OSError)
    assert not spool.accepting()


def test_refused_before_start_and_after_stop(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """Before start and once stop began, submits are refused with BackendUnavailable and the spool is not ready."""
    spool = new_spool(directory, api, clock)
    assert not spool.accepting()
    assert isinstance(failure_of(spool.submit(build_no(1))), BackendUnavailable)
    result_of(spool.start())
    assert spool.accepting()
    stopping = spool.stop(10)
    assert not spool.accepting()
    error = failure_of(spool.submit(build_no(1)))
    assert isinstance(error, BackendUnavailable)
    assert error.reason == "the spool is shutting down"
    result_of(stopping)


# -- stop and restart ------------------------------------------------------------------------------


def test_stop_drains_within_deadline_and_keeps_the_rest(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    stop(2.0) with six records after an outage and an API taking 1 s per
    build: the probe record is created at 1.25 s, the next four are then in
    flight together and their calls are cancelled at the deadline; the next
    start creates the remaining five, each once.
    """
    api.down = True
    spool = new_spool(directory, api, clock)
    result_of(spool.start())
    for n in range(6):
        spool.submit(build_no(n))
    api.down = False
    api.latency = 1.0
    stopping = spool.stop(2.0)
    # The drainer is waiting out its backoff (0.25 s); then one probe, then four at once.
    advance_to(clock, 1.25)
    assert api.created == [build_no(0).name]
    assert spool.stats().in_flight == 4
    advance_to(clock, 1.99)
    assert not stopping.called
    advance_to(clock, 2.0)
    assert result_of(stopping) is None
    assert api.created == [build_no(0).name]
    assert api.calls == [(0.0, build_no(0).name), (0.25, build_no(0).name)] + [
        (1.25, build_no(n).name) for n in range(1, 5)
    ]
    assert spool.stats().in_flight == 0
    assert records(directory) == [build_no(n).name for n in range(1, 6)]
    assert clock.getDelayedCalls() == []
    again = new_spool(directory, api, clock)
    result_of(again.start())
    drain(again, clock)
    assert api.created == [build_no(n).name for n in range(6)]
    stop(again, clock)


def test_stop_waits_for_writes_in_progress(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """A write under way when stop begins is finished and answered before the directory is released."""
    spool, io = started_on_manual_io(directory, api, clock)
    api.down = True
    submitted = spool.submit(build_no(1))
    stopping = spool.stop(0)
    clock.advance(0)
    assert not stopping.called
    io.complete_all()
    assert result_of(stopping) is None
    assert result_of(submitted) == Receipt(build_no(1).name, queued=True)
    assert records(directory) == [build_no(1).name]
    other = new_spool(directory, api, clock)
    result_of(other.start())
    stop(other, clock)


def test_stop_answers_waiting_submits(make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock) -> None:
    """A submit waiting for a slow API when the deadline passes is answered queued: its record is kept."""
    api.latency = 10.0
    spool = make()
    d = spool.submit(build_no(1))
    stopping = spool.stop(1.0)
    advance_to(clock, 1.0)
    assert result_of(stopping) is None
    assert result_of(d) == Receipt(build_no(1).name, queued=True)
    assert spool.stats().queued == 1


def test_stop_twice(make: Callable[..., SpooledBuilds], clock: Clock) -> None:
    """Both callers of stop() learn when it is done."""
    spool = make()
    first, second = spool.stop(0), spool.stop(0)
    clock.advance(0)
    assert result_of(first) is None
    assert result_of(second) is None


def test_lock_excludes_a_second_instance(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """A second spool on a directory in use fails to start with SpoolLocked naming the holder; after stop it starts."""
    first = new_spool(directory, api, clock)
    result_of(first.start())
    second = new_spool(directory, api, clock)
    error = failure_of(second.start())
    assert isinstance(error, SpoolLocked)
    assert f"pid {os.getpid()}" in str(error)
    assert not second.accepting()
    stop(first, clock)
    third = new_spool(directory, api, clock)
    result_of(third.start())
    assert third.accepting()
    stop(third, clock)


def test_start_twice_is_an_error(make: Callable[..., SpooledBuilds]) -> None:
    """start() is once per object."""
    spool = make()
    assert isinstance(failure_of(spool.start()), RuntimeError)


def test_sequence_continues_after_restart(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """Records written after a restart sort after the ones recovered."""
    api.down = True
    first = new_spool(directory, api, clock)
    result_of(first.start())
    first.submit(build_no(1))
    first.submit(build_no(2))
    stop(first, clock)
    second = new_spool(directory, api, clock)
    result_of(second.start())
    second.submit(build_no(3))
    assert records(directory) == [build_no(n).name for n in (1, 2, 3)]
    assert sorted(os.listdir(directory))[:3] == [record_filename(n, build_no(n).name) for n in (1, 2, 3)]
    stop(second, clock)


def test_nothing_logged_holds_the_payload(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, events: list[dict[str, Any]]
) -> None:
    """Through an outage, retries, a duplicate and a refusal, no log event carries payload bytes."""
    api.down = True
    api.rejects.add(build_no(2).name)
    spool = make()
    for n in range(3):
        spool.submit(build_no(n))
    spool.submit(build_no(0))
    api.down = False
    drain(spool, clock)
    assert events
    assert_never_logged_payload(events)
    assert MARKER.decode() not in repr(spool)


# -- the property ----------------------------------------------------------------------------------

operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(min_value=0, max_value=7)),
        st.tuples(st.just("down"), st.none()),
        st.tuples(st.just("up"), st.none()),
        st.tuples(st.just("advance"), st.floats(min_value=0.0, max_value=120.0)),
        st.tuples(st.just("restart"), st.none()),
    ),
    max_size=40,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(operations)
def test_any_history_creates_each_build_once_in_order(history: list[tuple[str, Any]]) -> None:
    """
    Whatever mix of submits (re-deliveries included), outages, waiting and
    restarts, once the API is up and the spool drained, every accepted
    build exists exactly once, created in the order it was first accepted,
    with its exact payload.
    """
    directory = Path(tempfile.mkdtemp(prefix="spool-property-"))
    try:
        clock = Clock()
        api = ApiBuilds(clock)
        spool = new_spool(directory, api, clock)
        result_of(spool.start())
        accepted: list[str] = []
        for action, argument in history:
            if action == "submit":
                build = build_no(argument)
                receipt = result_of(spool.submit(build))
                assert receipt.build_name == build.name
                if build.name not in accepted:
                    accepted.append(build.name)
            elif action == "down":
                api.down = True
            elif action == "up":
                api.down = False
            elif action == "advance":
                advance_to(clock, clock.seconds() + argument)
            else:
                stop(spool, clock)
                spool = new_spool(directory, api, clock)
                result_of(spool.start())
        api.down = False
        drain(spool, clock)
        assert api.created == accepted
        for name in accepted:
            assert api.payload(name) == build_no(int(name[-16:])).payload
        assert records(directory) == []
        stop(spool, clock)
    finally:
        shutil.rmtree(directory)


def test_build_secret_from_spool_is_the_contract_secret(make: Callable[..., SpooledBuilds], api: ApiBuilds) -> None:
    """What inner stores after the round trip through disk is exactly the build's Secret."""
    build = attrs.evolve(build_no(5), script="console.log(1)", config='{"a": 1}')
    make().submit(build)
    assert api.store.secrets[build.name] == build_secret(build, "brigade")


def test_inline_io_reports_errors() -> None:
    """InlineIO hands back a function's exception as a failed Deferred."""

    def broken() -> None:
        raise OSError(errno.EIO, "Input/output error")

    assert isinstance(failure_of(InlineIO().run(broken)), OSError)
    assert result_of(InlineIO().run(lambda: 3)) == 3


# -- isolation: no record holds back another ------------------------------------------------------

TRACEBACK_ENTRY = re.compile(r"[^:/]+(/[^:/]+)?:[0-9]+:[A-Za-z_<>][A-Za-z0-9_<>]*")


def dead_letter_reason(directory: Path, sequence: int, build: Build) -> dict[str, Any]:
    parked = directory / DEAD_LETTER / record_filename(sequence, build.name)
    assert decode_record(parked.read_bytes(), build.name) == build
    reason: dict[str, Any] = json.loads((directory / DEAD_LETTER / (parked.name + ".reason.json")).read_text())
    return reason


def test_poisoned_record_is_dead_lettered_while_the_others_are_built(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """
    A build whose submission raises UnicodeEncodeError every time (the
    field case) holds nothing back: the builds accepted after it are
    created at once while it is retried on its own backoff (0.5, 1, 2, 4 s);
    its fifth failure moves it to dead-letter/ with a reason naming the
    exception's type and innermost frames, never its message or the payload.
    It is counted, logged once as an error, and not drained again after a
    restart.
    """
    poisoned = build_no(1)
    api.poison.add(poisoned.name)
    spool = make(backoff=fixed(1.0))
    metrics = GatewayMetrics()
    metrics.watch_spool(spool.stats)
    assert result_of(spool.submit(poisoned)) == Receipt(poisoned.name, queued=True)
    for n in (2, 3, 4):
        assert result_of(spool.submit(build_no(n))) == Receipt(build_no(n).name)
    assert api.created == [build_no(n).name for n in (2, 3, 4)]
    assert spool.stats().queued == 1
    assert spool.stats().dead_lettered == 0
    advance_to(clock, 7.49)
    assert not (directory / DEAD_LETTER).exists()
    assert records(directory) == [poisoned.name]
    advance_to(clock, 7.5)
    assert api.calls == [(0.0, poisoned.name)] + [(0.0, build_no(n).name) for n in (2, 3, 4)] + [
        (when, poisoned.name) for when in (0.5, 1.5, 3.5, 7.5)
    ]
    assert records(directory) == []
    reason = dead_letter_reason(directory, 1, poisoned)
    assert sorted(reason) == [
        "attempts",
        "build",
        "error",
        "event_provider",
        "event_type",
        "project",
        "reason",
        "record",
        "time",
        "traceback",
    ]
    assert {key: value for key, value in reason.items() if key != "traceback"} == {
        "attempts": 5,
        "build": poisoned.name,
        "error": "UnicodeEncodeError",
        "event_provider": "dockerhub",
        "event_type": "image_push",
        "project": poisoned.project_id,
        "reason": "submitting it failed unexpectedly 5 times",
        "record": record_filename(1, poisoned.name),
        "time": "1970-01-01T00:00:07.500000+00:00",
    }
    # The innermost five frames, outermost first: the last two are the
    # store's submit and the line that raised.
    assert len(reason["traceback"]) == 5
    assert all(TRACEBACK_ENTRY.fullmatch(entry) for entry in reason["traceback"]), reason["traceback"]
    assert reason["traceback"][-2:] == [
        f"tests/test_spool.py:{line_of(ApiBuilds._answer, 'encode_field(POISON_TEXT)')}:_answer",
        f"tests/test_spool.py:{ENCODE_LINE}:encode_field",
    ]
    text = (directory / DEAD_LETTER / (record_filename(1, poisoned.name) + ".reason.json")).read_text()
    for secret in ("surrogates", "udc80", "poison", "position", MARKER.decode()):
        assert secret not in text
    assert spool.stats() == SpoolStats(
        queued=0,
        queued_bytes=0,
        created=3,
        duplicates=0,
        dead_lettered=1,
        quarantined=0,
        discarded=0,
        accepting=True,
        in_flight=0,
        oldest_age=0.0,
    )
    sample = metrics.registry.get_sample_value
    assert sample("brigade_cr_spool_dead_letters_total") == 1
    assert sample("brigade_cr_spool_quarantined_total") == 0
    assert sample("brigade_cr_spool_handed_over_total", {"result": "created"}) == 3
    assert sample("brigade_cr_spool_handed_over_total", {"result": "duplicate"}) == 0
    assert sample("brigade_cr_spool_queued_records") == 0
    assert sample("brigade_cr_spool_oldest_record_age_seconds") == 0
    failures = [event for event in events if "log_failure" in event]
    assert [event["attempt"] for event in failures] == [1, 2, 3, 4, 5]
    assert all(event["log_failure"].check(UnicodeEncodeError) for event in failures)
    errors = [event for event in events if event["log_level"] is LogLevel.error]
    assert len(errors) == 1
    assert errors[0]["build"] == poisoned.name
    assert_never_logged_payload(events)
    # After a restart it is not drained again: it is in dead-letter/, not the spool.
    stop(spool, clock)
    calls = len(api.calls)
    again = new_spool(directory, api, clock)
    result_of(again.start())
    assert again.stats().queued == 0
    advance_to(clock, 3600.0)
    assert len(api.calls) == calls
    stop(again, clock)


def test_attempts_bound_is_a_parameter(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """max_attempts=2: the second unexpected failure dead-letters the record (a RuntimeError here)."""
    api.surprises = 2
    spool = make(max_attempts=2)
    assert result_of(spool.submit(build_no(1))) == Receipt(build_no(1).name, queued=True)
    advance_to(clock, 0.25)
    assert [name for _, name in api.calls] == [build_no(1).name] * 2
    reason = dead_letter_reason(directory, 1, build_no(1))
    assert reason["attempts"] == 2
    assert reason["error"] == "RuntimeError"
    assert reason["reason"] == "submitting it failed unexpectedly 2 times"
    # fail() makes a Failure with no frames of its own: the summary names
    # where the drainer met it, within the bound, and nothing of the message.
    assert 1 <= len(reason["traceback"]) <= 5
    assert all(TRACEBACK_ENTRY.fullmatch(entry) for entry in reason["traceback"]), reason["traceback"]
    assert "surprise" not in json.dumps(reason)
    assert spool.stats().dead_lettered == 1
    assert api.created == []


def test_default_attempts_bound() -> None:
    """The documented bounds: five unexpected failures, four records in flight."""
    assert MAX_ATTEMPTS == 5
    assert MAX_IN_FLIGHT == 4
    spool = SpooledBuilds(Path("/nonexistent"), MemoryBuilds(), Clock(), InlineIO())
    assert (spool.max_attempts, spool.max_in_flight) == (5, 4)


def test_unreadable_record_is_retried_then_dead_lettered(
    make: Callable[..., SpooledBuilds],
    api: ApiBuilds,
    clock: Clock,
    directory: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A record the disk will not give back (EIO on every read) is retried on
    its own backoff while the next record is built, then dead-lettered; its
    reason has no build details (none could be read).
    """
    api.down = True
    spool = make(backoff=fixed(1.0))
    spool.submit(build_no(1))
    spool.submit(build_no(2))
    bad = record_filename(1, build_no(1).name)
    real_read = read_record  # what the drainer's batched reads call, until patched below

    def failing_read(path: Path, build_name: str) -> Build:
        if path.name == bad:
            raise OSError(errno.EIO, "Input/output error")
        return real_read(path, build_name)

    monkeypatch.setattr(spool_disk, "read_record", failing_read)
    api.down = False
    advance_to(clock, 0.5)  # the outage's probe: record 1 fails to read, record 2 is built
    assert api.created == [build_no(2).name]
    advance_to(clock, 0.5 + 0.5 + 1 + 2 + 4)
    reason = json.loads((directory / DEAD_LETTER / (bad + ".reason.json")).read_text())
    assert sorted(reason) == ["attempts", "build", "error", "reason", "record", "time", "traceback"]
    assert reason["reason"] == "reading it failed unexpectedly 5 times"
    assert reason["error"] == "OSError"
    assert reason["attempts"] == 5
    assert reason["time"] == "1970-01-01T00:00:08+00:00"
    assert reason["traceback"][-1].endswith(":failing_read")
    assert "Input/output" not in json.dumps(reason)
    assert records(directory) == []
    assert spool.stats().dead_lettered == 1


@implementer(IBuilds)
@attrs.define
class HeldBuilds:
    """An ``IBuilds`` whose submits stay open until the test answers them."""

    store: MemoryBuilds = attrs.field(factory=lambda: MemoryBuilds(namespace="brigade"))
    held: dict[str, Deferred[Receipt]] = attrs.field(factory=dict)
    calls: list[str] = attrs.field(factory=list)

    def submit(self, build: Build) -> Deferred[Receipt]:
        self.calls.append(build.name)
        waiting: Deferred[Receipt] = Deferred()
        self.held[build.name] = waiting
        waiting.addCallback(lambda _: self.store.submit(build))
        return waiting

    def release(self, number: int) -> None:
        self.held.pop(build_no(number).name).callback(None)  # type: ignore[arg-type]  # the callback ignores it

    def fail(self, number: int, error: Exception) -> None:
        self.held.pop(build_no(number).name).errback(error)

    def open(self) -> list[str]:
        return list(self.held)


def test_exactly_max_in_flight_oldest_first(make: Callable[..., SpooledBuilds], clock: Clock) -> None:
    """
    With max_in_flight=3 and submits held open, exactly three records are
    with the store at a time, the oldest three; each answer lets the oldest
    waiting record in.
    """
    inner = HeldBuilds()
    spool = make(inner=inner, max_in_flight=3, ack_wait=0)
    for n in range(7):
        assert result_of(spool.submit(build_no(n))) == Receipt(build_no(n).name, queued=True)
    assert inner.open() == [build_no(n).name for n in (0, 1, 2)]
    assert spool.stats().in_flight == 3
    assert spool.stats().queued == 7
    inner.release(1)
    assert inner.open() == [build_no(n).name for n in (0, 2, 3)]
    assert spool.stats().in_flight == 3
    assert spool.stats().queued == 6
    inner.release(0)
    inner.release(3)
    assert inner.open() == [build_no(n).name for n in (2, 4, 5)]
    for n in (2, 4, 5):
        inner.release(n)
    assert inner.open() == [build_no(6).name]
    assert spool.stats().in_flight == 1
    inner.release(6)
    assert inner.calls == [build_no(n).name for n in range(7)]
    assert sorted(inner.store.secrets) == sorted(build_no(n).name for n in range(7))
    assert spool.stats().in_flight == 0
    assert spool.stats().queued == 0


def test_slow_record_holds_back_no_other(make: Callable[..., SpooledBuilds], clock: Clock) -> None:
    """A record whose submit never answers takes one slot: the rest drain through the others."""
    inner = HeldBuilds()
    spool = make(inner=inner, max_in_flight=2, ack_wait=0)
    for n in range(5):
        spool.submit(build_no(n))
    for n in (1, 2, 3, 4):
        inner.release(n)
    assert inner.open() == [build_no(0).name]
    assert spool.stats().queued == 1
    assert spool.stats().in_flight == 1


def test_poison_in_every_slot_holds_back_nothing(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    More poisoned records than slots, all at the front of the queue: the
    good records behind them are still built at once, since a record
    waiting out its backoff takes no slot.
    """
    for n in range(3):
        api.poison.add(build_no(n).name)
    spool = make(max_in_flight=2)
    for n in range(3):
        assert result_of(spool.submit(build_no(n))) == Receipt(build_no(n).name, queued=True)
    assert result_of(spool.submit(build_no(3))) == Receipt(build_no(3).name)
    assert api.created == [build_no(3).name]
    drain(spool, clock)
    assert sorted(name for name in os.listdir(directory / DEAD_LETTER) if parse_record_filename(name)) == [
        record_filename(n + 1, build_no(n).name) for n in range(3)
    ]
    assert spool.stats().dead_lettered == 3
    assert len(api.calls) == 3 * 5 + 1


def test_outage_probes_with_one_record(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    Through an outage with ten records queued the store sees one call per
    backoff step (the oldest record), not ten: attempts do not multiply by
    the queue's length. When the probe succeeds the rest follow, each once.
    """
    api.down = True
    spool = make(backoff=fixed(1.0))
    names = [build_no(n).name for n in range(10)]
    for n in range(10):
        assert result_of(spool.submit(build_no(n))) == Receipt(names[n], queued=True)
    advance_to(clock, 100.0)
    assert api.calls == [(when, names[0]) for when in (0.0, 0.5, 1.5, 3.5, 7.5, 15.5, 31.5, 61.5, 91.5)]
    assert spool.stats().in_flight == 0
    assert spool.stats().oldest_age == 100.0
    api.down = False
    advance_to(clock, 121.5)
    assert api.calls[9:] == [(121.5, name) for name in names]
    assert api.created == names
    assert records(directory) == []
    assert spool.stats().dead_lettered == 0


def test_outage_beginning_with_records_in_flight(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock
) -> None:
    """
    Four records in flight when the API goes down: their four failures are
    one outage (one backoff step), then one probe at a time until one
    succeeds; then four at once again. Nothing is lost or built twice.
    """
    api.latency = 1.0
    spool = make(backoff=fixed(1.0), ack_wait=0)
    names = [build_no(n).name for n in range(6)]
    for n in range(6):
        spool.submit(build_no(n))
    assert spool.stats().in_flight == 4
    api.down = True
    advance_to(clock, 4.0)
    assert api.calls == [(0.0, name) for name in names[:4]] + [(1.5, names[0]), (3.5, names[0])]
    assert spool.stats().in_flight == 1
    api.down = False
    advance_to(clock, 10.0)
    assert api.calls[6:] == [(4.5, name) for name in names[1:5]] + [(5.5, names[5])]
    assert api.created == names
    assert spool.stats().queued == 0


def test_outage_retry_after_from_any_record_in_flight(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock
) -> None:
    """A Retry-After from any of the records in flight holds the next probe back that long."""
    inner = HeldBuilds()
    spool = make(inner=inner, backoff=fixed(1.0), ack_wait=0)
    for n in range(4):
        spool.submit(build_no(n))
    inner.fail(0, BackendUnavailable("API down"))
    inner.fail(1, BackendUnavailable("too many requests", retry_after=20))
    inner.fail(2, BackendUnavailable("API down"))
    inner.fail(3, BackendUnavailable("API down"))
    advance_to(clock, 19.99)
    assert inner.open() == []
    advance_to(clock, 20.0)
    assert inner.open() == [build_no(0).name]
    assert inner.calls == [build_no(n).name for n in range(4)] + [build_no(0).name]


def test_oldest_record_age(make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    The age of the oldest queued record: from its acceptance while running,
    from its file's modification time after a restart, and 0 when nothing
    is queued.
    """
    api.down = True
    spool = make()
    assert spool.stats().oldest_age == 0.0
    advance_to(clock, 10.0)
    spool.submit(build_no(1))
    advance_to(clock, 15.0)
    spool.submit(build_no(2))
    advance_to(clock, 40.0)
    assert spool.stats().oldest_age == 30.0
    stop(spool, clock)
    os.utime(directory / record_filename(1, build_no(1).name), (12.0, 12.0))
    os.utime(directory / record_filename(2, build_no(2).name), (16.0, 16.0))
    again = make()
    assert again.stats().oldest_age == 28.0
    api.down = False
    drain(again, clock)
    assert again.stats().oldest_age == 0.0
    assert api.created == [build_no(1).name, build_no(2).name]


@attrs.frozen
class StrictBuild(Build):
    """A ``Build`` whose validators refuse everything (``validate`` makes the error)."""

    @staticmethod
    def validate() -> Exception:
        return ValueError("invalid")

    def __attrs_post_init__(self) -> None:
        raise self.validate()


@pytest.mark.parametrize(
    "error", [lambda: InvalidText("commit_ref"), lambda: ValueError("bad"), lambda: TypeError("bad")]
)
def test_invalid_build_in_a_record_is_corrupt(monkeypatch: pytest.MonkeyPatch, error: Callable[[], Exception]) -> None:
    """Whatever a Build's validators raise while decoding a record becomes CorruptRecord."""
    record = encode_record(build_no(1))
    monkeypatch.setattr(StrictBuild, "validate", staticmethod(error))
    monkeypatch.setattr(spool_record, "Build", StrictBuild)
    with pytest.raises(CorruptRecord) as raised:
        decode_record(record, build_no(1).name)
    assert raised.value.args == ("body is not a valid build",)


def test_invalid_build_is_quarantined_at_start(
    api: ApiBuilds, clock: Clock, directory: Path, make: Callable[..., SpooledBuilds], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record whose build no longer passes validation is quarantined, counted, and never submitted."""
    api.down = True
    first = make()
    first.submit(build_no(1))
    stop(first, clock)
    monkeypatch.setattr(StrictBuild, "validate", staticmethod(lambda: InvalidText("commit_ref")))
    monkeypatch.setattr(spool_record, "Build", StrictBuild)
    api.down = False
    calls = len(api.calls)
    spool = make()
    assert spool.stats().quarantined == 1
    assert spool.stats().queued == 0
    reason = json.loads((directory / QUARANTINE / (record_filename(1, build_no(1).name) + ".reason.json")).read_text())
    assert reason["reason"] == "body is not a valid build"
    assert len(api.calls) == calls


def test_dead_letter_that_cannot_be_parked_is_tried_again(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    Parking a refused record fails once (EIO): the record stays and is tried
    again on its own backoff (0.25 s) while the next one is built; then it is
    refused again and parked, with one reason file.
    """
    failures = {"dead-letter:reason-written"}

    def failing(step: str) -> None:
        if step in failures:
            failures.discard(step)
            raise OSError(errno.EIO, "Input/output error")

    api.rejects.add(build_no(1).name)
    spool = make(at_step=failing)
    assert isinstance(failure_of(spool.submit(build_no(1))), BackendRejected)
    assert result_of(spool.submit(build_no(2))) == Receipt(build_no(2).name)
    assert records(directory) == [build_no(1).name]
    assert spool.stats().dead_lettered == 0
    advance_to(clock, 0.25)
    assert api.calls == [(0.0, build_no(1).name), (0.0, build_no(2).name), (0.25, build_no(1).name)]
    assert records(directory) == []
    assert sorted(os.listdir(directory / DEAD_LETTER)) == [
        record_filename(1, build_no(1).name),
        record_filename(1, build_no(1).name) + ".reason.json",
    ]
    assert spool.stats().dead_lettered == 1
    assert api.created == [build_no(2).name]


# -- start-up backlog progress ----------------------------------------------------------


def backlog_lines(events: list[dict[str, Any]]) -> list[tuple[float, str]]:
    """The backlog progress lines logged, each with the time its event names."""
    return [
        (event["elapsed"], formatEvent(event))
        for event in events
        if str(event.get("log_format", "")).startswith("Spool backlog")
    ]


def queue_while_down(api: ApiBuilds, clock: Clock, directory: Path, count: int) -> None:
    """Leave ``count`` records in ``directory``: written while the API was down, then stopped."""
    api.down = True
    first = new_spool(directory, api, clock)
    result_of(first.start())
    for n in range(count):
        first.submit(build_no(n))
    stop(first, clock)
    api.down = False


def test_backlog_progress_and_completion_lines(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """
    30 records at start, a store answering one every 0.75 s: a progress line
    every 10 s (drained, left, the last interval's rate, time to go), then the
    completion line at 22.5 s. A record submitted meanwhile is not part of
    the backlog.
    """
    queue_while_down(api, clock, directory, 30)
    api.latency = 0.75
    start = clock.seconds()
    spool = make(max_in_flight=1)
    spool.submit(build_no(100))
    advance_to(clock, start + 30)
    assert backlog_lines(events) == [
        (10.0, "Spool backlog: 13 of 30 record(s) drained, 17 left, 1.3/s, about 13s to go"),
        (20.0, "Spool backlog: 26 of 30 record(s) drained, 4 left, 1.3/s, about 3s to go"),
        (22.5, "Spool backlog of 30 record(s) drained in 22.5s"),
    ]
    assert api.created[-1] == build_no(100).name
    assert spool.stats().queued == 0
    assert clock.getDelayedCalls() == []


def test_backlog_progress_through_an_outage(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """While the store is down, the progress line says nothing was drained in the interval."""
    queue_while_down(api, clock, directory, 3)
    api.down = True
    api.retry_after = 60
    start = clock.seconds()
    spool = make()
    advance_to(clock, start + 10)
    assert backlog_lines(events) == [
        (10.0, "Spool backlog: 0 of 3 record(s) drained, 3 left, none in the last 10s"),
    ]
    api.down = False
    advance_to(clock, start + 60)
    assert backlog_lines(events)[1:] == [
        (20.0, "Spool backlog: 0 of 3 record(s) drained, 3 left, none in the last 10s"),
        (30.0, "Spool backlog: 0 of 3 record(s) drained, 3 left, none in the last 10s"),
        (40.0, "Spool backlog: 0 of 3 record(s) drained, 3 left, none in the last 10s"),
        (50.0, "Spool backlog: 0 of 3 record(s) drained, 3 left, none in the last 10s"),
        (60.0, "Spool backlog of 3 record(s) drained in 60.0s"),
    ]
    assert spool.stats().queued == 0


def test_no_backlog_no_progress(make: Callable[..., SpooledBuilds], clock: Clock, events: list[dict[str, Any]]) -> None:
    """An empty spool at start schedules no progress line and logs none."""
    spool = make()
    result_of(spool.submit(build_no(1)))
    advance_to(clock, 100)
    assert backlog_lines(events) == []
    assert clock.getDelayedCalls() == []


def test_stop_ends_backlog_progress(
    api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """Stopping with the backlog not drained leaves no progress timer behind and logs no completion."""
    queue_while_down(api, clock, directory, 2)
    api.down = True
    spool = new_spool(directory, api, clock)
    result_of(spool.start())
    stop(spool, clock)
    advance_to(clock, clock.seconds() + 100)
    assert backlog_lines(events) == []
    assert clock.getDelayedCalls() == []


def recovered_on_manual_io(
    directory: Path, inner: Any, clock: Clock, builds: Sequence[Build], **changes: Any
) -> tuple[SpooledBuilds, ManualIO]:
    """A spool over ``inner`` on a ``ManualIO``, started over record files of ``builds`` (numbered from 1)."""
    from brigade_cr.stores.spool.disk import no_step, write_record_files

    directory.mkdir(parents=True, exist_ok=True)
    written = [(record_filename(n, build.name), encode_record(build)) for n, build in enumerate(builds, 1)]
    assert write_record_files(directory, written, no_step) == [None] * len(builds)
    io = ManualIO()
    spool = new_spool(directory, inner, clock, io=io, **changes)
    started = spool.start()
    for _ in range(10):  # bounded: the recovery step
        if started.called:
            break
        io.complete()
    result_of(started)
    return spool, io


def test_records_launched_together_are_read_back_in_one_trip(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    Recovered records handed over in one turn are read back in one trip to
    the thread pool (``read_records``): the first one's read brings the
    others due with it, and their hand-overs, begun while it is under way,
    take their builds from it rather than reading again. Each is built.
    """
    spool, io = recovered_on_manual_io(directory, api, clock, [build_no(n) for n in (1, 2, 3)], max_in_flight=4)
    batches = []
    for _ in range(10):  # bounded: three records
        if "read_records" not in io.names():
            break
        index = io.names().index("read_records")
        batches.append([path.name for path, _, _ in io.pending[index][1][0]])
        io.complete(index)
    assert batches == [[record_filename(n, build_no(n).name) for n in (1, 2, 3)]]
    assert [name for _, name in api.calls] == [build_no(n).name for n in (1, 2, 3)]
    io.complete_all()
    assert api.created == [build_no(n).name for n in (1, 2, 3)]
    assert records(directory) == []
    stop(spool, clock)


def drain_counting_reads(spool: SpooledBuilds, io: ManualIO, clock: Clock, steps: int) -> list[list[str]]:
    """Complete ``io``'s calls in order until the spool is empty (at most ``steps``); the names in each read batch."""
    reads = []
    for _ in range(steps):
        if not io.pending:
            if spool.stats().queued == 0:
                break
            advance_to(clock, clock.seconds() + 1)
            continue
        function, args, _ = io.pending[0]
        if function.__name__ == "read_records":
            reads.append([name for _, name, _ in args[0]])
        io.complete(0)
    assert spool.stats().queued == 0
    return reads


def test_a_backlog_is_read_back_in_trips_of_read_ahead_records(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    A backlog drained one record at a time is read back ``READ_AHEAD``
    records per trip, oldest first (70 records: 32, 32, 6), and every one
    is built once, in order.
    """
    from brigade_cr.stores.spool.spooled import READ_AHEAD

    assert READ_AHEAD == 32
    names = [build_no(n).name for n in range(1, 71)]
    spool, io = recovered_on_manual_io(directory, api, clock, [build_no(n) for n in range(1, 71)], max_in_flight=1)
    reads = drain_counting_reads(spool, io, clock, steps=500)
    assert [len(batch) for batch in reads] == [32, 32, 6]
    assert [name for batch in reads for name in batch] == names
    assert api.created == names
    assert records(directory) == []
    stop(spool, clock)


def test_read_ahead_keeps_to_its_bytes(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """Large records are read ahead only as many as fit in ``READ_AHEAD_BYTES``, the one due always."""
    from brigade_cr.stores.spool.spooled import READ_AHEAD_BYTES

    builds = [a_build(ulid=f"01jgq8w4h0{n:016d}", payload=b"x" * 300_000) for n in range(1, 8)]
    assert READ_AHEAD_BYTES // len(encode_record(builds[0])) == 2  # big enough for the bound to bite
    spool, io = recovered_on_manual_io(directory, api, clock, builds, max_in_flight=1)
    reads = drain_counting_reads(spool, io, clock, steps=200)
    assert [len(batch) for batch in reads] == [2, 2, 2, 1]
    assert api.created == [build.name for build in builds]
    stop(spool, clock)


def test_a_record_read_ahead_stays_read_while_the_api_is_down(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    While the store fails and one probe at a time is tried, the records read
    ahead keep their builds: no probe reads them again, and once the store
    is back each is built once.
    """
    api.down = True
    builds = [build_no(n) for n in range(1, 6)]
    spool, io = recovered_on_manual_io(directory, api, clock, builds, max_in_flight=4, backoff=fixed(1.0))
    reads = []
    for _ in range(20):  # bounded: a few probes
        while io.pending:
            function, args, _ = io.pending[0]
            if function.__name__ == "read_records":
                reads.append([name for _, name, _ in args[0]])
            io.complete(0)
        advance_to(clock, clock.seconds() + 1)
    # The first turn hands four over (all fail) with the fifth read ahead;
    # the first probe reads the other three again with it, and from then on
    # each probe reads only itself.
    first = [build_no(n).name for n in range(1, 6)]
    assert len(reads) >= 4
    assert reads == [first, first[:4]] + [first[:1]] * (len(reads) - 2)
    api.down = False
    reads += drain_counting_reads(spool, io, clock, steps=200)
    assert sorted(api.created) == sorted(build_no(n).name for n in range(1, 6))
    assert len(api.created) == 5
    stop(spool, clock)


@implementer(IPacedBuilds)
@attrs.define
class PacedApi:
    """``ApiBuilds`` behind a client-side limit the test opens and closes (``waits``)."""

    api: ApiBuilds
    waits: bool = False

    def submit(self, build: Build) -> Deferred[Receipt]:
        return self.api.submit(build)

    def would_wait(self) -> bool:
        return self.waits


def test_a_sender_never_waits_on_the_client_side_limit(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    When the store would wait for its rate limit, a submit is answered queued
    the moment its record is durable, and the build still goes from memory
    (not read back) when a slot is free; when it would not, the sender waits
    for its build.
    """
    api.latency = 0.5
    paced = PacedApi(api, waits=True)
    spool, io = started_on_manual_io(directory, paced, clock)
    limited = spool.submit(build_no(1))
    io.complete()  # its record is durable
    assert result_of(limited) == Receipt(build_no(1).name, queued=True)
    assert [name for _, name in api.calls] == [build_no(1).name]  # handed over from memory
    assert "read_records" not in io.names()
    paced.waits = False
    waited = spool.submit(build_no(2))
    io.complete()
    assert not waited.called  # waits for its build
    advance_to(clock, 0.5)
    assert result_of(waited) == Receipt(build_no(2).name)
    io.complete_all()
    assert api.created == [build_no(1).name, build_no(2).name]
    stop(spool, clock)


# -- batch files ------------------------------------------------------------------------------------


def batch_of(directory: Path, numbers: list[int], first: int = 1) -> Path:
    """Builds ``numbers`` written as one batch file (as a write batch leaves them), numbered from ``first``."""
    from brigade_cr.stores.spool.disk import no_step, write_records

    directory.mkdir(parents=True, exist_ok=True)
    batch = [
        (record_filename(first + index, build_no(n).name), encode_record(build_no(n)))
        for index, n in enumerate(numbers)
    ]
    outcomes = write_records(directory, batch, no_step)
    assert all(isinstance(outcome, spool_disk.Placement) for outcome in outcomes)
    return directory / batch_filename(first)


def test_a_batch_file_stays_until_its_last_record_is_handed_over(api: ApiBuilds, clock: Clock, directory: Path) -> None:
    """
    Records found in a batch file are read back each at its place; the file
    is removed, in one step, only once the last of them is in the API: until
    then a crash would hand the others over again.
    """
    path = batch_of(directory, [1, 2, 3])
    api.latency = 1.0
    spool, io = started_on_manual_io(directory, api, clock, max_in_flight=1)
    assert io.names() == ["read_records"]  # build 1, with 2 and 3 read ahead
    assert [placement.offset for _, _, placement in io.pending[0][1][0]] == [
        slot.offset for slot in spool_record.split_batch(path.read_bytes())[0]
    ]
    io.complete()
    for n in (1, 2):
        clock.advance(1.0)
        assert api.created == [build_no(m).name for m in range(1, n + 1)]
        assert io.pending == []  # no removal: the others are still in the file
        assert path.exists()
    clock.advance(1.0)
    assert api.created == [build_no(n).name for n in (1, 2, 3)]
    assert [args[1] for _, args, _ in io.pending] == [[path.name]]  # one removal, of the file
    io.complete()
    assert os.listdir(directory) == [LOCK_FILE]
    assert spool.stats().queued == 0
    stop(spool, clock)


def test_a_refused_record_is_copied_out_of_its_batch_file_into_dead_letter(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """A record refused for good leaves its batch file as a record file of its own, valid, that can be moved back."""
    batch_of(directory, [1, 2, 3])
    api.rejects.add(build_no(2).name)
    spool = make()
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(3).name]
    parked = directory / DEAD_LETTER / record_filename(2, build_no(2).name)
    assert decode_record(parked.read_bytes(), build_no(2).name) == build_no(2)
    reason = json.loads((directory / DEAD_LETTER / (parked.name + ".reason.json")).read_text())
    assert (reason["record"], reason["reason"]) == (parked.name, "422 Unprocessable Entity")
    assert sorted(os.listdir(directory)) == [DEAD_LETTER, LOCK_FILE]
    assert spool.stats().dead_lettered == 1


def test_a_damaged_record_in_a_batch_file_is_quarantined_alone_at_start(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path, events: list[dict[str, Any]]
) -> None:
    """The damaged stretch goes to quarantine/ with its reason; the records around it are built; the file then goes."""
    path = batch_of(directory, [1, 2, 3])
    data = bytearray(path.read_bytes())
    slots, _ = spool_record.split_batch(bytes(data))
    middle = slots[1]
    data[middle.offset + middle.length - 4] ^= 0x01
    path.write_bytes(bytes(data))
    spool = make()
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(3).name]
    stretch = f"{path.name}.{middle.offset}.damaged"
    assert (directory / QUARANTINE / stretch).read_bytes() == bytes(data[middle.offset : slots[2].offset])
    reason = json.loads((directory / QUARANTINE / (stretch + ".reason.json")).read_text())
    assert reason == {
        "batch": path.name,
        "length": middle.length + 1,
        "offset": middle.offset,
        "reason": "a damaged stretch of a batch file",
        "record": stretch,
        "time": "1970-01-01T00:00:00+00:00",
    }
    assert spool.stats().quarantined == 1
    assert sorted(os.listdir(directory)) == sorted([LOCK_FILE, QUARANTINE])
    assert_never_logged_payload(events)


def test_a_record_damaged_in_its_batch_file_while_queued_is_quarantined_alone(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    Damage found when the drainer reads a record back: its bytes are copied
    to quarantine/, the others are built. (Each record read in its own turn:
    a record read ahead before the damage would be built from what was read.)
    """
    path = batch_of(directory, [1, 2, 3])
    api.down = True
    spool = make(read_ahead=1)
    slots, _ = spool_record.split_batch(path.read_bytes())
    data = bytearray(path.read_bytes())
    data[slots[1].offset + 20] ^= 0x01  # in its header
    path.write_bytes(bytes(data))
    api.down = False
    drain(spool, clock)
    assert api.created == [build_no(1).name, build_no(3).name]
    assert spool.stats().quarantined == 1
    quarantined = directory / QUARANTINE / record_filename(2, build_no(2).name)
    assert quarantined.read_bytes() == bytes(data[slots[1].offset : slots[1].offset + slots[1].length])
    assert sorted(os.listdir(directory)) == sorted([LOCK_FILE, QUARANTINE])


def test_a_record_read_ahead_before_its_file_was_damaged_is_built_from_what_was_read(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    The first hand-over (the API down) reads the other two records ahead,
    intact; damage to the file afterwards does not reach them: all three
    are built, nothing is quarantined, and the file goes.
    """
    path = batch_of(directory, [1, 2, 3])
    api.down = True
    spool = make()
    assert api.calls  # the first hand-over was tried, and read the others with its own
    slots, _ = spool_record.split_batch(path.read_bytes())
    data = bytearray(path.read_bytes())
    data[slots[1].offset + 20] ^= 0x01
    path.write_bytes(bytes(data))
    api.down = False
    drain(spool, clock)
    assert api.created == [build_no(n).name for n in (1, 2, 3)]
    assert spool.stats().quarantined == 0
    assert os.listdir(directory) == [LOCK_FILE]


def test_a_batch_file_partly_handed_over_before_a_restart_gives_duplicates_not_second_builds(
    make: Callable[..., SpooledBuilds], api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    A crash after some records of a batch file were built leaves the file
    whole: after the restart those are answered as duplicates, the rest
    created, each build once.
    """
    batch_of(directory, [1, 2, 3])
    result_of(api.store.submit(build_no(1)))
    result_of(api.store.submit(build_no(2)))
    spool = make()
    drain(spool, clock)
    assert api.created == [build_no(3).name]
    assert spool.stats().duplicates == 2
    assert spool.stats().created == 1
    assert sorted(api.store.secrets) == sorted(build_no(n).name for n in (1, 2, 3))
    assert os.listdir(directory) == [LOCK_FILE]


def test_records_written_together_share_a_batch_file_and_new_ones_take_new_numbers(
    api: ApiBuilds, clock: Clock, directory: Path
) -> None:
    """
    Submits that wait for the one write slot are written as one batch file;
    after a restart its records are drained from it and the next record's
    number follows every number the directory has used.
    """
    api.down = True
    spool, io = started_on_manual_io(directory, api, clock, write_concurrency=1)
    answers = [spool.submit(build_no(n)) for n in (1, 2, 3)]
    io.complete_all()
    assert [result_of(answer) for answer in answers] == [Receipt(build_no(n).name, queued=True) for n in (1, 2, 3)]
    assert sorted(os.listdir(directory)) == sorted([LOCK_FILE, record_filename(1, build_no(1).name), batch_filename(2)])
    stop(spool, clock)
    api.down = False
    again, io = started_on_manual_io(directory, api, clock)
    later = again.submit(build_no(4))
    io.complete_all()
    io.complete_all()
    assert result_of(later) == Receipt(build_no(4).name)
    drain(again, clock)
    io.complete_all()
    assert sorted(api.created) == sorted(build_no(n).name for n in (1, 2, 3, 4))
    assert os.listdir(directory) == [LOCK_FILE]
    stop(again, clock)
