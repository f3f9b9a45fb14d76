"""
``SpooledBuilds``: the drainer in front of a build store.

It answers ``submit`` once the build's record is durable (``disk.py``), then
hands the record to the ``IBuilds`` it wraps (``inner``) in the background
and removes it once ``inner`` has it. How failures are kept apart, so that no
record holds back another, is in the package docstring (``__init__.py``).

This module is longer than the others on purpose: it is one state machine
(writes, acknowledgements, the drain, the outage, stop) over one set of
fields, and its invariants (a record is answered, handed over, parked or
kept, exactly once) are easier to check in one place than across modules.
"""

from __future__ import annotations

import enum
import heapq
import os
import traceback
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, Sequence, TypeVar, cast

import attrs
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from brigade_cr.core.errors import BackendRejected, BackendUnavailable
from brigade_cr.core.interfaces import IBuilds, IPacedBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.fileio import BlockingIO
from brigade_cr.stores.retry import Backoff
from brigade_cr.stores.spool.commit import GroupCommit
from brigade_cr.stores.spool.disk import (
    DEAD_LETTER,
    QUARANTINE,
    Placement,
    no_step,
    park_record,
    park_slice,
    probe_directory,
    read_records,
    recover,
    remove_records,
    write_records,
)
from brigade_cr.stores.spool.record import BUILD_NAME, CorruptRecord, encode_record, record_filename

T = TypeVar("T")

# How many times a record may fail unexpectedly (any exception but the
# store's BackendUnavailable / BackendRejected) before it is dead-lettered.
# With the default backoff the attempts span four to eight seconds: enough for
# a passing surprise, and a record that fails the same way five times in a
# row will not succeed on the sixth.
MAX_ATTEMPTS = 5
# How many records are handed to ``inner`` at once, by default.
MAX_IN_FLIGHT = 4
# How many write batches run at once. One: what arrives while a batch is
# written gathers into the next batch file, so under load batches grow and
# each record's share of the fsync shrinks, where more slots would split the
# same records into more, smaller files. (Four, when each record was a file
# of its own, let the writers' many waits for the interpreter's lock
# overlap; docs/performance.md, "Batch files, and the collector once the
# cycle was gone".)
WRITE_CONCURRENCY = 1
# How many of the innermost frames a dead letter's traceback summary names.
TRACEBACK_FRAMES = 5
# Clock times closer than this count as the same moment: a timer set for a
# due time must not fire a hair early and find nothing due.
_EPSILON = 1e-6
# The shortest wait before a record is tried again.
_MIN_DELAY = 1e-3

# Seconds between the progress lines of a start-up backlog.
PROGRESS_INTERVAL = 10.0
# A record read back for the drain brings the next ones due with it, in the
# same trip to the thread pool, so that a backlog drained at the API's pace
# is not read one trip per record (the trip costs more than the read;
# docs/performance.md, "Reading ahead"). At most this many records, and
# this many bytes of them, wait in memory for their turn (by default).
READ_AHEAD = 32
READ_AHEAD_BYTES = 1024 * 1024


@attrs.frozen
class SpoolStats:
    """
    A snapshot for logs and metrics. ``queued``/``queued_bytes`` are records
    on disk (or being written); ``in_flight`` the records being handed to
    ``inner`` now; ``oldest_age`` the seconds since the oldest queued record
    was accepted (0 when none is); the rest count events since ``start()``.
    """

    queued: int
    queued_bytes: int
    created: int
    duplicates: int
    dead_lettered: int
    quarantined: int
    discarded: int
    accepting: bool
    in_flight: int = 0
    oldest_age: float = 0.0


class _Phase(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class _State(enum.Enum):
    WRITING = "writing"
    QUEUED = "queued"
    ABANDONED = "abandoned"
    DONE = "done"  # handed over, parked or vanished: out of the queue


# A queue entry is all that stays in memory of a queued record, and the
# spool may hold 10,000 of them: fields that most records never use are
# None until they do, and names are made when asked for.
@attrs.define(eq=False)
class _Entry:
    sequence: int
    name: str
    size: int
    # clock time the record was accepted (its file's mtime after a restart)
    accepted: float
    state: _State = _State.WRITING
    # unexpected failures so far: at ``max_attempts`` it is dead-lettered
    attempts: int = 0
    # times it was put off (any reason its own): the backoff's index
    deferrals: int = 0
    # clock time before which it is not tried again
    due: float = 0.0
    # being handed over right now
    busy: bool = False
    # handed over at least once since this process wrote or found it
    launched: bool = False
    # submits waiting to learn whether the build got created
    waiters: list[Deferred[Receipt]] | None = None
    # submits of the same build waiting for this record's write to finish
    written: list[Deferred[None]] | None = None
    # the build itself, from its write until the drainer is offered it (a
    # record handed over the moment it is durable is not read back), or read
    # ahead of its turn until its hand-over takes it
    build: Build | None = None
    # its read-ahead, while that is under way
    reading: _Outcome[Build] | None = None
    # the batch file holding the record (one string shared by all of its
    # records) and the record's offset in it; None for a file of its own
    batch: str | None = None
    offset: int = 0
    # the name of the record's own file when it is not the one its number
    # and name make (a recovered record given a new number)
    own_filename: str | None = None

    @property
    def filename(self) -> str:
        """The record's own file's name, or the one it gets if parked when it is in a batch file."""
        if self.own_filename is not None:
            return self.own_filename
        return record_filename(self.sequence, self.name)

    @property
    def placement(self) -> Placement | None:
        """Where the record is in its batch file; None when it has a file of its own."""
        return None if self.batch is None else Placement(self.batch, self.offset, self.size)


class _Halted(Exception):
    """The drainer was told to stop."""


def _settle(waiter: Deferred[T], outcome: T | BaseException) -> None:
    if waiter.called:
        return
    if isinstance(outcome, BaseException):
        waiter.errback(Failure(outcome))
    else:
        waiter.callback(outcome)


def error_type(error: BaseException) -> str:
    """The qualified name of ``error``'s type (no module for builtins): what a dead letter says failed."""
    kind = type(error)
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def traceback_summary(error: BaseException, frames: int = TRACEBACK_FRAMES) -> list[str]:
    """
    The innermost ``frames`` frames of ``error``'s traceback, outermost
    first, each as ``dir/file.py:line:function``. Only places in the code:
    never the message or a variable, which could hold payload data or
    credentials.
    """
    summary = []
    for frame in traceback.extract_tb(error.__traceback__)[-frames:]:
        parts = frame.filename.replace("\\", "/").split("/")
        summary.append(f"{'/'.join(parts[-2:])}:{frame.lineno}:{frame.name}")
    return summary


@implementer(IBuilds)
# Validators at construction only: the state machine's fields change several
# times per record, and attrs would run them on each (as in GroupCommit).
@attrs.define(repr=False, on_setattr=attrs.setters.NO_OP)
class SpooledBuilds:
    """
    Builds recorded durably in ``directory``, then created by ``inner``,
    oldest first, up to ``max_in_flight`` at once (see the module docstring
    for how failures are kept apart).

    ``io`` runs the blocking file operations (``ThreadedIO`` in production),
    concurrent writes and removals sharing one call and one directory fsync
    (``commit.py``); ``clock`` times the backoff and the wait for an
    acknowledgement. A submit whose record is handed to ``inner`` the moment
    it is durable (nothing older due, a slot free, ``inner`` healthy and,
    for an ``IPacedBuilds``, not about to wait for its client-side limit)
    waits up to ``ack_wait`` seconds for the build, so that an idle gateway
    tells its sender the build exists; any other submit is answered
    ``queued`` as soon as its record is durable, so no sender waits on the
    queue or on the limit. The spool
    refuses new records beyond ``max_records`` records or ``max_bytes``
    bytes. A record that fails unexpectedly ``max_attempts`` times is
    dead-lettered. ``at_step`` is called with each step of the write, drain
    and park protocols (``WRITE_STEPS``, ``DRAIN_STEPS``,
    ``DEAD_LETTER_STEPS``, ``quarantine:...``) as it completes: tests crash
    or fail there; production leaves it alone.
    """

    directory: Path
    inner: IBuilds
    clock: IReactorTime
    io: BlockingIO
    backoff: Backoff = attrs.field(factory=Backoff)
    max_records: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    ack_wait: float = 1.0
    # What a refused sender is told to wait: the spool drains at the API's
    # pace, and a full spool does not empty in a second.
    refuse_retry_after: int = 30
    # After a failed write, how often to test whether the directory is
    # writable again. Without this a pod made unready by a failed write would
    # get no traffic, so no write, and stay unready for ever.
    probe_interval: float = 5.0
    at_step: Callable[[str], None] = no_step
    max_in_flight: int = attrs.field(default=MAX_IN_FLIGHT, validator=attrs.validators.ge(1))
    max_attempts: int = attrs.field(default=MAX_ATTEMPTS, validator=attrs.validators.ge(1))
    # How often a start with a backlog logs how far its drain has got: a
    # restart after an outage may hold 10k records, drained at the API's pace.
    progress_interval: float = attrs.field(default=PROGRESS_INTERVAL, validator=attrs.validators.gt(0))
    write_concurrency: int = attrs.field(default=WRITE_CONCURRENCY, validator=attrs.validators.ge(1))
    # 1: each record read back alone, in its own turn
    read_ahead: int = attrs.field(default=READ_AHEAD, validator=attrs.validators.ge(1))
    read_ahead_bytes: int = attrs.field(default=READ_AHEAD_BYTES, validator=attrs.validators.ge(0))

    _phase: _Phase = attrs.field(init=False, default=_Phase.NEW)
    _queue: deque[_Entry] = attrs.field(init=False, factory=deque)
    _names: dict[str, _Entry] = attrs.field(init=False, factory=dict)
    _bytes: int = attrs.field(init=False, default=0)
    _next_sequence: int = attrs.field(init=False, default=1)
    _lock_fd: int | None = attrs.field(init=False, default=None)
    _write_failed: bool = attrs.field(init=False, default=False)
    _failed_size: int = attrs.field(init=False, default=0)
    _probe: IDelayedCall | None = attrs.field(init=False, default=None)
    _probing: Deferred[None] | None = attrs.field(init=False, default=None)
    _refusing: bool = attrs.field(init=False, default=False)
    # The store said BackendUnavailable: until a hand-over succeeds, one
    # probe at a time, none before _resume_at.
    _store_failing: bool = attrs.field(init=False, default=False)
    _outage_attempts: int = attrs.field(init=False, default=0)
    _resume_at: float = attrs.field(init=False, default=0.0)
    _in_flight: int = attrs.field(init=False, default=0)
    # The queued records not being handed over: due now, by sequence (oldest
    # first), and waiting out their own backoff, by due time.
    _ready: list[tuple[int, _Entry]] = attrs.field(init=False, factory=list)
    _later: list[tuple[float, int, _Entry]] = attrs.field(init=False, factory=list)
    _flights: set[Deferred[None]] = attrs.field(init=False, factory=set)
    _halted: bool = attrs.field(init=False, default=False)
    _wake: Deferred[None] | None = attrs.field(init=False, default=None)
    _interruptibles: set[Deferred[Any]] = attrs.field(init=False, factory=set)
    _starting: _Outcome[None] | None = attrs.field(init=False, default=None)
    _drainer: Deferred[None] | None = attrs.field(init=False, default=None)
    _stopping: _Outcome[None] | None = attrs.field(init=False, default=None)
    _created: int = attrs.field(init=False, default=0)
    _duplicates: int = attrs.field(init=False, default=0)
    _dead_lettered: int = attrs.field(init=False, default=0)
    _quarantined: int = attrs.field(init=False, default=0)
    _discarded: int = attrs.field(init=False, default=0)
    _backlog: _Backlog | None = attrs.field(init=False, default=None)
    # Batch file name -> how many of its records are still queued: it is
    # removed when the last one is handed over or parked.
    _batches: dict[str, int] = attrs.field(init=False, factory=dict)
    _writes: GroupCommit[tuple[str, bytes]] = attrs.field(init=False)
    _removals: GroupCommit[str] = attrs.field(init=False)
    _reads: GroupCommit[tuple[Path, str, Placement | None]] = attrs.field(init=False)
    _empty_waiters: list[Deferred[None]] = attrs.field(init=False, factory=list)
    # inner, when it can tell whether a build would wait for its limit
    _paced: IPacedBuilds | None = attrs.field(init=False, default=None)

    log: ClassVar[Logger] = Logger()

    def __attrs_post_init__(self) -> None:
        self._paced = IPacedBuilds(self.inner, None)
        self._writes = GroupCommit(
            self.io,
            write_records,
            (self.directory,),
            (self.at_step,),
            concurrency=self.write_concurrency,
            settled=self._count_batch,
        )
        self._removals = GroupCommit(self.io, remove_records, (self.directory,), (self.at_step,))
        self._reads = GroupCommit(self.io, read_records)

    def __repr__(self) -> str:
        # Log events carry this object as their source: name the directory,
        # never the wrapped store (which may hold payloads or credentials).
        return f"<SpooledBuilds {str(self.directory)!r}>"

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """
        Lock the directory, recover it (see the module docstring) and start
        draining. Fires with None once the spool accepts submits. Fails with
        ``SpoolLocked`` when another process holds the directory, with
        ``OSError`` when it cannot be created or read, and with
        ``RuntimeError`` when called twice.
        """
        if self._phase is not _Phase.NEW:
            return fail(RuntimeError("a SpooledBuilds starts once"))
        self._phase = _Phase.STARTING
        self._starting = _Outcome.of(Deferred.fromCoroutine(self._start()))
        return self._starting.observe()

    async def _start(self) -> None:
        try:
            recovery = await self.io.run(recover, self.directory, self._now(), self.at_step)
        except BaseException:
            self._phase = _Phase.STOPPED
            raise
        self._lock_fd = recovery.lock_fd
        for filename in recovery.discarded:
            self.log.info(
                "Discarded the half-written spool record {record}: its sender was never answered",
                record=filename,
            )
        for filename, reason in recovery.quarantined:
            self.log.error(
                "Quarantined the damaged spool record {record}: {reason}",
                record=filename,
                reason=reason,
                directory=str(self.directory / QUARANTINE),
            )
        self._discarded += len(recovery.discarded)
        self._quarantined += len(recovery.quarantined)
        for found in recovery.records:
            entry = _Entry(
                found.sequence,
                found.name,
                found.size,
                found.modified,
                state=_State.QUEUED,
                batch=None if found.placement is None else found.placement.filename,
                offset=0 if found.placement is None else found.placement.offset,
                own_filename=None if found.filename == record_filename(found.sequence, found.name) else found.filename,
            )
            if found.placement is not None:
                self._count_batch([found.placement])
            self._queue.append(entry)
            self._ready_now(entry)
            self._names[found.name] = entry
            self._bytes += found.size
        self._next_sequence = recovery.next_sequence
        self._phase = _Phase.RUNNING
        self.log.info(
            "Spool {directory} started: {queued} record(s) to drain",
            directory=str(self.directory),
            queued=len(self._queue),
            discarded=len(recovery.discarded),
            quarantined=len(recovery.quarantined),
        )
        if self._queue:
            self._backlog = _Backlog(
                total=len(self._queue),
                last_sequence=self._queue[-1].sequence,
                started=self.clock.seconds(),
                clock=self.clock,
                interval=self.progress_interval,
                report=self._report_backlog,
            )
        self._drainer = Deferred.fromCoroutine(self._drain())
        self._drainer.addErrback(lambda failure: self.log.failure("The spool drainer failed", failure))

    def stop(self, deadline: float) -> Deferred[None]:
        """
        Stop accepting (new submits fail with ``BackendUnavailable``), let
        the writes in progress finish, keep draining for up to ``deadline``
        seconds, then stop the drainer (cancelling a call to ``inner`` in
        progress: its record stays and is submitted again next time) and
        release the directory. Fires with None then; never fails. Submits
        still waiting for an acknowledgement are answered ``queued``. Every
        record not drained is left intact for the next ``start()``.
        """
        if self._stopping is None:
            self._stopping = _Outcome.of(Deferred.fromCoroutine(self._stop(deadline)))
        return self._stopping.observe()

    async def _stop(self, deadline: float) -> None:
        if self._phase is _Phase.NEW:
            self._phase = _Phase.STOPPED
            return
        if self._starting is not None:
            try:
                await self._starting.observe()
            except Exception:
                return  # start failed: there is nothing to stop
        self._phase = _Phase.STOPPING
        if self._backlog is not None:
            self._backlog.cancel()
        self.log.info(
            "Spool stopping: {queued} record(s) queued, draining for up to {deadline:.1f}s",
            queued=len(self._queue),
            deadline=deadline,
        )
        timer = self.clock.callLater(max(0.0, deadline), self._halt)
        self._poke()
        if self._drainer is not None:
            await self._drainer
        if timer.active():
            timer.cancel()
        # A write in its thread cannot be called back; wait so that no record
        # appears after the lock is released.
        for entry in list(self._queue):
            if entry.state is _State.WRITING:
                try:
                    await self._written(entry)
                except BackendUnavailable:
                    pass
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._probing is not None:
            await _Outcome.of(self._probing).observe()
        self._release_waiters()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        self._phase = _Phase.STOPPED
        self.log.info(
            "Spool stopped: {queued} record(s) left for the next start",
            queued=len(self._queue),
            queued_bytes=self._bytes,
        )

    def _halt(self) -> None:
        self._halted = True
        for waiting in list(self._interruptibles):
            waiting.cancel()

    # -- state for probes and metrics ------------------------------------------------

    def accepting(self) -> bool:
        """
        True when a submit would be written: started, not stopping, not full,
        and the last write did not fail (or space was freed since). For a
        readiness probe; it does not depend on ``inner``.
        """
        return (
            self._phase is _Phase.RUNNING
            and not self._write_failed
            and len(self._queue) < self.max_records
            and self._bytes < self.max_bytes
        )

    def stats(self) -> SpoolStats:
        """Counts for logs and metrics."""
        oldest = max(0.0, self.clock.seconds() - self._queue[0].accepted) if self._queue else 0.0
        return SpoolStats(
            queued=len(self._queue),
            queued_bytes=self._bytes,
            created=self._created,
            duplicates=self._duplicates,
            dead_lettered=self._dead_lettered,
            quarantined=self._quarantined,
            discarded=self._discarded,
            accepting=self.accepting(),
            in_flight=self._in_flight,
            oldest_age=oldest,
        )

    def when_empty(self) -> Deferred[None]:
        """
        Fires with None once the spool runs and holds no queued record with
        none being handed over (records parked in ``dead-letter/`` or
        ``quarantine/`` are not queued): at once if that is so now (or once
        a start in progress has recovered), else when the hand-over that
        empties it lands. Called after ``start()`` it never fails, and it
        does not fire if the spool stops (or its start fails) first; before
        ``start()`` it fails with ``RuntimeError``. Only a landing hand-over
        wakes it: a submit whose write fails while nothing is in flight
        leaves it waiting (``--drain-only``, its user, submits nothing).
        """
        if self._phase is _Phase.NEW:
            return fail(RuntimeError("when_empty() before start()"))
        waiter: Deferred[None] = Deferred()
        self._empty_waiters.append(waiter)
        if self._phase is _Phase.STARTING and self._starting is not None:
            self._starting.observe().addCallbacks(lambda _: self._notify_empty(), lambda _: None)
        else:
            self._notify_empty()
        return waiter

    def _notify_empty(self) -> None:
        """Fire ``when_empty()``'s waiters if the spool is running and empty now."""
        if self._phase is not _Phase.RUNNING or self._queue or self._in_flight or not self._empty_waiters:
            return
        waiters, self._empty_waiters = self._empty_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- submitting ----------------------------------------------------------------

    def submit(self, build: Build) -> Deferred[Receipt]:
        """
        Record ``build`` durably; if its record is handed to ``inner`` at
        once, wait (up to ``ack_wait``) for ``inner`` to create it.

        Fires with ``Receipt(name, duplicate=...)`` when ``inner`` created the
        build (or already had it) in that time; with ``Receipt(name,
        queued=True)`` when the record is durable but the build not created
        yet (older records or full slots before it, or ``inner`` would wait
        for its rate limit: at once; ``inner`` failing or slow: when it
        fails, or after ``ack_wait``); with
        ``Receipt(name, duplicate=True, queued=True)`` when a record of that
        build is already queued (no second record is written).

        Fails with ``BackendUnavailable`` (``retry_after`` set) when the spool
        is not running, is full, or cannot write; with ``BackendRejected``
        when the build name cannot be a record's name, or when ``inner``
        refused the build for good while the submit waited (the record is
        then in ``dead-letter/``; a ``queued`` receipt would promise a build
        that will never exist). No other failure of ``inner`` reaches the
        caller: once the record is durable it is the drainer's to deliver.

        Cancelling the Deferred only stops the caller waiting: a write that
        began is finished and kept.
        """
        work = Deferred.fromCoroutine(self._submit(build))
        answer: Deferred[Receipt] = Deferred()

        def deliver(result: Receipt | Failure) -> None:
            if answer.called:
                return
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        work.addBoth(deliver)
        return answer

    async def _submit(self, build: Build) -> Receipt:
        name = build.name
        if self._phase is not _Phase.RUNNING:
            state = "not started" if self._phase in (_Phase.NEW, _Phase.STARTING) else "shutting down"
            raise BackendUnavailable(f"the spool is {state}", retry_after=self.refuse_retry_after)
        if not BUILD_NAME.fullmatch(name):
            raise BackendRejected("the build name cannot be spooled")
        existing = self._names.get(name)
        if existing is not None:
            if existing.state is _State.WRITING:
                await self._written(existing)
            self.log.debug("Build {build} is already queued", build=name)
            return Receipt(name, duplicate=True, queued=True)
        record = encode_record(build)
        if len(self._queue) + 1 > self.max_records or self._bytes + len(record) > self.max_bytes:
            if not self._refusing:
                self._refusing = True
                self.log.warn(
                    "The spool is full ({queued} records, {queued_bytes} bytes): refusing deliveries",
                    queued=len(self._queue),
                    queued_bytes=self._bytes,
                )
            raise BackendUnavailable("the spool is full", retry_after=self.refuse_retry_after)
        self._refusing = False
        entry = _Entry(self._next_sequence, name, len(record), self.clock.seconds())
        self._next_sequence += 1
        self._queue.append(entry)
        self._names[name] = entry
        self._bytes += entry.size
        try:
            placement = await self._writes.add((entry.filename, record))
        except Exception as e:
            if isinstance(e, OSError):
                reason = f"cannot write to the spool: {e.strerror or e}"
                self.log.warn("Refusing build {build}: {reason}", build=name, reason=reason, record=entry.filename)
            else:
                reason = "cannot write to the spool"
                self.log.failure("Refusing build {build}: writing its record failed", build=name)
            error = BackendUnavailable(reason, retry_after=self.refuse_retry_after)
            self._abandon(entry, error)
            self._write_failed, self._failed_size = True, entry.size
            self._schedule_probe()
            raise error from None
        if isinstance(placement, Placement):
            entry.batch, entry.offset = placement.filename, placement.offset
        entry.state = _State.QUEUED
        self._ready_now(entry)
        self._write_failed = False
        for waiter in entry.written or ():
            _settle(waiter, None)
        entry.written = None
        queued = Receipt(name, queued=True)
        if self._store_failing or self._phase is not _Phase.RUNNING or self.ack_wait <= 0:
            self._poke()
            return queued
        # When the client-side limit has no token for it now, its sender
        # would wait on the limit, not on its build: it is answered at once
        # (the record is durable). Otherwise register before waking the
        # drainer: with synchronous I/O it may finish this very record
        # before _poke returns.
        paced = self._paced is not None and self._paced.would_wait()
        acknowledged = None if paced else self._acknowledgement(entry)
        entry.build = build
        self._poke()
        # The drainer took the build synchronously if it took the record at
        # all; a record left to wait its turn is read back when it comes.
        entry.build = None
        if acknowledged is None:
            return queued
        if not entry.launched and not acknowledged.called:
            # Older records or busy slots stand before it: the sender would
            # wait on the queue, not on its build. The record is durable.
            self._answer(entry, queued)
        return await acknowledged

    def _count_batch(self, results: Sequence[object]) -> None:
        """Count the records written to (or found in) each batch file, before any of them can be let go."""
        for result in results:
            if isinstance(result, Placement):
                self._batches[result.filename] = self._batches.get(result.filename, 0) + 1

    async def _let_go(self, entry: _Entry, moved: bool = False) -> None:
        """
        ``entry``'s record is no longer needed on disk (handed over, or
        parked: ``moved`` when its own file was moved away): remove its file,
        or, in a batch file, remove that once its last record is let go.
        Raises what the removal raised.
        """
        batch = entry.batch
        if batch is None:
            if not moved:
                await self._removals.add(entry.filename)
            return
        entry.batch = None  # once only
        left = self._batches.get(batch, 1) - 1
        if left > 0:
            self._batches[batch] = left
            return
        self._batches.pop(batch, None)
        await self._removals.add(batch)

    def _written(self, entry: _Entry) -> Deferred[None]:
        if entry.state is _State.QUEUED:
            return succeed(None)
        if entry.state is _State.ABANDONED:
            return fail(BackendUnavailable("cannot write to the spool", retry_after=self.refuse_retry_after))
        waiter: Deferred[None] = Deferred()
        if entry.written is None:
            entry.written = []
        entry.written.append(waiter)
        return waiter

    def _abandon(self, entry: _Entry, error: BackendUnavailable) -> None:
        entry.state = _State.ABANDONED
        self._forget(entry)
        for waiter in entry.written or ():
            _settle(waiter, BackendUnavailable(error.reason, error.retry_after))
        entry.written = None
        self._poke()  # the drainer may be waiting for this record, at the head

    def _schedule_probe(self) -> None:
        if self._probe is None and self._probing is None and self._phase is _Phase.RUNNING:
            self._probe = self.clock.callLater(self.probe_interval, self._run_probe)

    def _run_probe(self) -> None:
        self._probe = None
        if not self._write_failed or self._phase is not _Phase.RUNNING:
            return

        def writable(_: None) -> None:
            if self._write_failed:
                self._write_failed = False
                self.log.info("The spool directory {directory} is writable again", directory=str(self.directory))

        def still_failing(failure: Failure) -> None:
            self.log.debug("The spool directory is still not writable: {reason}", reason=str(failure.value))

        def done(_: None) -> None:
            self._probing = None
            if self._write_failed:
                self._schedule_probe()

        probing = self.io.run(probe_directory, self.directory, self._failed_size)
        probing.addCallbacks(writable, still_failing)
        self._probing = probing
        probing.addCallback(done)

    def _acknowledgement(self, entry: _Entry) -> Deferred[Receipt]:
        waiter: Deferred[Receipt] = Deferred()
        timer = self.clock.callLater(self.ack_wait, _settle, waiter, Receipt(entry.name, queued=True))

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        waiter.addBoth(stop_timer)
        if entry.waiters is None:
            entry.waiters = []
        entry.waiters.append(waiter)
        return waiter

    def _answer(self, entry: _Entry, outcome: Receipt | BaseException) -> None:
        waiters, entry.waiters = entry.waiters or (), None
        for waiter in waiters:
            if isinstance(outcome, BackendRejected):
                _settle(waiter, BackendRejected(outcome.reason))
            elif isinstance(outcome, BackendUnavailable):
                _settle(waiter, BackendUnavailable(outcome.reason, outcome.retry_after))
            else:
                _settle(waiter, outcome)

    def _release_waiters(self) -> None:
        """Answer every waiting submit ``queued``: its record is durable."""
        for entry in list(self._queue):
            self._answer(entry, Receipt(entry.name, queued=True))

    def _forget(self, entry: _Entry) -> None:
        """Take ``entry`` out of the queue and the accounting."""
        if entry.state is _State.QUEUED:
            entry.state = _State.DONE
        if self._names.get(entry.name) is entry:
            del self._names[entry.name]
        if self._queue and self._queue[0] is entry:
            self._queue.popleft()
        else:
            try:
                self._queue.remove(entry)
            except ValueError:
                return
        self._bytes -= entry.size
        backlog = self._backlog
        if backlog is not None and entry.sequence <= backlog.last_sequence:
            backlog.left -= 1
            if backlog.left == 0:
                self._backlog = None
                backlog.cancel()
                self.log.info(
                    "Spool backlog of {total} record(s) drained in {elapsed:.1f}s",
                    total=backlog.total,
                    elapsed=self.clock.seconds() - backlog.started,
                )

    def _report_backlog(self, backlog: _Backlog) -> None:
        """One progress line for the backlog found at start."""
        now = self.clock.seconds()
        drained = backlog.total - backlog.left
        # The pace of the last interval, not since start: after an outage
        # the average would promise a finish long gone by.
        interval = now - backlog.reported_at
        rate = (drained - backlog.reported_drained) / interval if interval > 0 else 0.0
        backlog.reported_at = now
        backlog.reported_drained = drained
        fields: dict[str, Any] = {
            "drained": drained,
            "total": backlog.total,
            "left": backlog.left,
            "rate": rate,
            "elapsed": now - backlog.started,
        }
        if rate > 0:
            self.log.info(
                "Spool backlog: {drained} of {total} record(s) drained, {left} left, "
                "{rate:.1f}/s, about {eta:.0f}s to go",
                eta=backlog.left / rate,
                **fields,
            )
        else:
            self.log.info(
                "Spool backlog: {drained} of {total} record(s) drained, {left} left, none in the last {interval:.0f}s",
                interval=interval,
                **fields,
            )

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock.seconds(), timezone.utc).isoformat()

    # -- draining ----------------------------------------------------------------------

    def _poke(self) -> None:
        """Wake the drainer if it is waiting for work."""
        wake, self._wake = self._wake, None
        if wake is not None and not wake.called:
            wake.callback(None)

    async def _interruptibly(self, waiting: Deferred[T]) -> T:
        """``await waiting``, unless ``stop``'s deadline passes first: then raise ``_Halted``."""
        if self._halted:
            waiting.cancel()
            waiting.addErrback(lambda _: None)
            raise _Halted()
        self._interruptibles.add(waiting)
        try:
            return await waiting
        except CancelledError:
            if self._halted:
                raise _Halted() from None
            raise
        finally:
            self._interruptibles.discard(waiting)

    async def _drain(self) -> None:
        """Hand records over as they fall due until stopped; then wait for the hand-overs in flight."""
        try:
            while not self._halted:
                next_due = self._dispatch()
                if not self._queue and self._phase is not _Phase.RUNNING:
                    break  # stopping, and nothing left
                # Idle, every slot busy, or every record waiting out its
                # backoff: a submit, a finished hand-over or the timer wakes us.
                wake: Deferred[None] = Deferred()
                self._wake = wake
                timer = None
                if next_due is not None:
                    timer = self.clock.callLater(max(0.0, next_due - self.clock.seconds()), self._poke)
                try:
                    await self._interruptibly(wake)
                finally:
                    if timer is not None and timer.active():
                        timer.cancel()
        except _Halted:
            pass
        # Their calls to inner were cancelled, but a file step in a thread
        # cannot be: let them finish, so nothing touches the directory after
        # stop() has released it.
        while self._flights:
            await DeferredList(list(self._flights))

    def _limit(self) -> int:
        return 1 if self._store_failing else self.max_in_flight

    def _ready_now(self, entry: _Entry) -> None:
        """``entry`` may be handed over as soon as a slot is free."""
        heapq.heappush(self._ready, (entry.sequence, entry))

    def _dispatch(self) -> float | None:
        """
        Start hand-overs of the due records, oldest first, while slots are
        free. Returns the time a waiting record (or the next probe) falls
        due when a slot is free for it, else None.

        Each queued record that is neither being handed over nor written is
        in ``_ready`` (due, by sequence) or ``_later`` (by due time), so this
        costs a heap operation per record, however many wait out a backoff.
        Entries that left the queue meanwhile are dropped as they surface.
        """
        while not self._halted:
            now = self.clock.seconds()
            if self._store_failing:
                if self._in_flight:
                    return None  # the probe's answer wakes us
                if now + _EPSILON < self._resume_at:
                    return self._resume_at
            if self._in_flight >= self._limit():
                return None
            while self._later and self._later[0][0] <= now + _EPSILON:
                _, _, waited = heapq.heappop(self._later)
                if waited.state is _State.QUEUED and not waited.busy:
                    self._ready_now(waited)
            entry = None
            while self._ready:
                _, candidate = heapq.heappop(self._ready)
                if candidate.state is _State.QUEUED and not candidate.busy:
                    entry = candidate
                    break
            if entry is None:
                return self._later[0][0] if self._later else None
            self._launch(entry)
        return None

    def _launch(self, entry: _Entry) -> None:
        entry.busy = True
        entry.launched = True
        self._in_flight += 1
        landed = False
        flight = Deferred.fromCoroutine(self._attempt(entry, probe=self._store_failing))

        def land(result: Failure | None) -> None:
            nonlocal landed
            landed = True
            if isinstance(result, Failure):  # _attempt deals with everything; a bug if not
                self.log.failure("The spool drainer failed unexpectedly; carrying on", result, record=entry.filename)
            entry.busy = False
            self._in_flight -= 1
            self._flights.discard(flight)
            if entry.state is _State.QUEUED and entry.due <= self.clock.seconds() + _EPSILON:
                # Still queued and not put off (the store is failing): it
                # keeps its place for the next hand-over.
                self._ready_now(entry)
            self._poke()
            self._notify_empty()

        flight.addBoth(land)
        if not landed:
            self._flights.add(flight)

    async def _attempt(self, entry: _Entry, probe: bool) -> None:
        """One hand-over of ``entry``; never fails (every outcome is dealt with here)."""
        try:
            await self._hand_over(entry, probe)
        except _Halted:
            return
        except Exception:
            # A bug in the spool's own steps. Blaming the record keeps it
            # from stalling (it is bounded like any surprise), while the
            # others go on.
            await self._failed_unexpectedly(entry, None, Failure(), "handling", release=False)

    async def _hand_over(self, entry: _Entry, probe: bool) -> None:
        build = entry.build
        entry.build = None
        if build is None:
            try:
                build = await self._read(entry)
            except CorruptRecord as e:
                await self._park_damaged(entry, str(e))
                return
            except FileNotFoundError:
                self.log.error("The spool record {record} vanished before it was drained", record=entry.filename)
                self._answer(entry, BackendUnavailable("the spooled record vanished", self.refuse_retry_after))
                self._forget(entry)
                await self._let_go_logged(entry, moved=True)
                return
            except Exception:
                await self._failed_unexpectedly(entry, None, Failure(), "reading")
                return
        fields = {"build": entry.name, "project": build.project_id, "record": entry.filename}
        try:
            receipt: Receipt = await self._interruptibly(maybeDeferred(self.inner.submit, build))
        except _Halted:
            raise
        except BackendRejected as e:
            self._store_answered()
            await self._dead_letter(entry, build, e.reason)
            return
        except BackendUnavailable as e:
            self._unavailable(e, probe, fields)
            return
        except CancelledError:
            # Not ours (stop() raises _Halted): inner gave up on a call.
            # Nothing says the record is to blame; try it again later.
            self.log.warn("Submitting build {build} was cancelled; retrying it later", **fields)
            self._defer(entry)
            self._answer(entry, Receipt(entry.name, queued=True))
            return
        except Exception:
            await self._failed_unexpectedly(entry, build, Failure(), "submitting")
            return
        self.at_step("drain:submitted")
        self._store_answered()
        if receipt.duplicate:
            self._duplicates += 1
        else:
            self._created += 1
        # At debug: the delivery itself was logged at info by the gateway.
        self.log.debug(
            "Build {build} for {project} handed over from the spool{duplicate}",
            duplicate=" (duplicate)" if receipt.duplicate else "",
            **fields,
        )
        if self._names.get(entry.name) is entry:
            # From now on a re-delivery is a new record, which inner will
            # answer as a duplicate. (Before answering: the answer's
            # callbacks may submit again at once.)
            del self._names[entry.name]
        self._answer(entry, Receipt(entry.name, duplicate=receipt.duplicate))
        await self._let_go_logged(entry)
        self._forget(entry)
        self._write_failed = False  # space was freed

    def _read_item(self, entry: _Entry) -> tuple[Path, str, Placement | None]:
        return self.directory / (entry.batch or entry.filename), entry.name, entry.placement

    def _read(self, entry: _Entry) -> Deferred[Build]:
        """
        ``entry``'s build, read back from its record: from the read-ahead
        already under way for it, or in a read that brings with it the
        records due next (``_ahead_of``), each kept in its entry's ``build``
        until its own hand-over takes it. A read-ahead that fails is
        forgotten: that record's own hand-over reads it again and meets the
        failure itself (a damaged record is parked by that hand-over).
        """
        if entry.reading is not None:
            return entry.reading.observe()
        ahead = self._ahead_of(entry)
        reads = self._reads.add_all([self._read_item(e) for e in (entry, *ahead)])
        for other, read in zip(ahead, reads[1:], strict=True):
            outcome = other.reading = _Outcome.of(read)
            outcome.observe().addBoth(self._read_ahead, other)
        return reads[0]

    def _ahead_of(self, entry: _Entry) -> list[_Entry]:
        """
        The queued records due now that the drainer takes after ``entry``
        (the oldest not being handed over), not yet read, as many as keep
        the records read ahead within ``read_ahead`` and
        ``read_ahead_bytes``, looking at most four times ``read_ahead``
        records into the queue.
        """
        now = self.clock.seconds() + _EPSILON
        ahead: list[_Entry] = []
        held, held_bytes = 1, entry.size
        limit, scan = self.read_ahead, 4 * self.read_ahead
        for scanned, other in enumerate(self._queue):
            if scanned >= scan or held >= limit:
                break
            if other is entry or other.state is not _State.QUEUED or other.busy:
                continue
            if other.build is not None or other.reading is not None:
                held, held_bytes = held + 1, held_bytes + other.size
                continue
            if other.due > now:
                continue
            if held_bytes + other.size > self.read_ahead_bytes:
                break
            ahead.append(other)
            held, held_bytes = held + 1, held_bytes + other.size
        return ahead

    def _read_ahead(self, result: Build | Failure, entry: _Entry) -> None:
        entry.reading = None
        # A hand-over that began meanwhile observes the read itself.
        if isinstance(result, Build) and entry.state is _State.QUEUED and not entry.busy:
            entry.build = result

    async def _let_go_logged(self, entry: _Entry, moved: bool = False) -> None:
        """``_let_go``, a failure logged: the record is then submitted again after a restart, as a duplicate."""
        try:
            await self._let_go(entry, moved)
        except Exception:
            self.log.failure(
                "Cannot remove the spool record {record}: after a restart it is submitted again, as a duplicate",
                build=entry.name,
                record=entry.filename,
            )

    def _store_answered(self) -> None:
        """The store answered (created, duplicate, refused): an outage is over."""
        if self._store_failing:
            self.log.info(
                "The build store answers again: draining {queued} record(s), up to {in_flight} at once",
                queued=len(self._queue),
                in_flight=self.max_in_flight,
            )
        self._store_failing = False
        self._outage_attempts = 0

    def _unavailable(self, error: BackendUnavailable, probe: bool, fields: Mapping[str, Any]) -> None:
        """
        The store is failing. The record keeps its place and its count: the
        whole drainer backs off, then probes with one record at a time.
        """
        now = self.clock.seconds()
        if probe or not self._store_failing:
            delay = self.backoff.delay(self._outage_attempts, error.retry_after)
            self._outage_attempts += 1
            self._store_failing = True
            self._resume_at = max(self._resume_at, now + delay)
            self.log.warn(
                "Build {build} stays spooled; retrying in {delay:.1f}s: {reason}",
                delay=delay,
                reason=error.reason,
                attempt=self._outage_attempts,
                retry_after=error.retry_after,
                **fields,
            )
        else:
            # One of several in flight when the outage began: the same news,
            # already acted on; only a longer Retry-After adds to it.
            if error.retry_after is not None:
                wait = min(max(float(error.retry_after), 0.0), self.backoff.max_retry_after)
                self._resume_at = max(self._resume_at, now + wait)
            self.log.debug("Build {build} stays spooled: {reason}", reason=error.reason, **fields)
        # Nobody should wait on a store that is failing: the records are safe.
        self._release_waiters()

    def _defer(self, entry: _Entry) -> None:
        """Try ``entry`` again after its own backoff."""
        # Never at once, even with a zero backoff: the drainer must not spin.
        entry.due = self.clock.seconds() + max(self.backoff.delay(entry.deferrals), _MIN_DELAY)
        heapq.heappush(self._later, (entry.due, entry.sequence, entry))
        entry.deferrals += 1

    async def _failed_unexpectedly(
        self, entry: _Entry, build: Build | None, failure: Failure, stage: str, release: bool = True
    ) -> None:
        """
        ``entry`` failed in a way neither the store nor the spool expects: try
        it again after its own backoff, or, after ``max_attempts`` failures,
        dead-letter it with a summary of the failure.
        """
        entry.attempts += 1
        self.log.failure(
            "{stage} build {build} from the spool failed unexpectedly (attempt {attempt} of {attempts})",
            failure,
            stage=stage.capitalize(),
            build=entry.name,
            record=entry.filename,
            attempt=entry.attempts,
            attempts=self.max_attempts,
        )
        if entry.attempts < self.max_attempts:
            self._defer(entry)
            if release:
                # Its record is safe, and it will not be built in a moment.
                self._answer(entry, Receipt(entry.name, queued=True))
            return
        error = cast(BaseException, failure.value)  # a Failure always holds one
        reason = f"{stage} it failed unexpectedly {entry.attempts} times"
        details: dict[str, Any] = {
            "reason": reason,
            "time": self._now(),
            "build": entry.name,
            "attempts": entry.attempts,
            "error": error_type(error),
            "traceback": traceback_summary(error),
        }
        if build is not None:
            details.update(project=build.project_id, event_type=build.event_type, event_provider=build.event_provider)
        await self._park_dead(entry, details)

    async def _dead_letter(self, entry: _Entry, build: Build, reason: str) -> None:
        details = {
            "reason": reason,
            "time": self._now(),
            "build": entry.name,
            "project": build.project_id,
            "event_type": build.event_type,
            "event_provider": build.event_provider,
        }
        await self._park_dead(entry, details)

    async def _park_dead(self, entry: _Entry, details: dict[str, Any]) -> None:
        reason = details["reason"]
        self._answer(entry, BackendRejected(reason))
        try:
            parked = await self._park(entry, DEAD_LETTER, details)
        except Exception:
            self.log.failure("Cannot move the build {build} to the dead-letter directory", build=entry.name)
            # It stays queued: tried again, and parked then.
            self._defer(entry)
            return
        self._dead_lettered += 1
        self.log.error(
            "Build {build} for {project} was parked in {dead_letter}: {reason}",
            build=entry.name,
            project=details.get("project", "(unknown)"),
            reason=reason,
            dead_letter=str(self.directory / DEAD_LETTER / parked),
        )
        self._forget(entry)
        await self._let_go_logged(entry, moved=True)

    def _park(self, entry: _Entry, place: str, details: dict[str, Any]) -> Deferred[str]:
        """Park ``entry``'s record in ``place``: its own file moved, or from a batch file a copy of it."""
        if entry.placement is None:
            return self.io.run(park_record, self.directory, entry.filename, place, details, self.at_step)
        return self.io.run(park_slice, self.directory, entry.placement, entry.filename, place, details, self.at_step)

    async def _park_damaged(self, entry: _Entry, reason: str) -> None:
        details = {"reason": reason, "time": self._now(), "build": entry.name}
        try:
            parked = await self._park(entry, QUARANTINE, details)
        except Exception:
            self.log.failure("Cannot quarantine the damaged spool record {record}", record=entry.filename)
            self._defer(entry)
            return
        self._quarantined += 1
        self.log.error(
            "Quarantined the damaged spool record {record}: {reason}",
            record=entry.filename,
            reason=reason,
            quarantine=str(self.directory / QUARANTINE / parked),
        )
        self._answer(entry, BackendUnavailable("the spooled record was damaged", self.refuse_retry_after))
        self._forget(entry)
        await self._let_go_logged(entry, moved=True)


@attrs.define(eq=False)
class _Backlog:
    """
    The records queued when the spool started (sequences up to
    ``last_sequence``): how many are left, and a timer calling ``report``
    every ``interval`` seconds until they are all gone.
    """

    total: int
    last_sequence: int
    started: float
    clock: IReactorTime
    interval: float
    report: Callable[[_Backlog], None]
    left: int = attrs.field(init=False)
    reported_at: float = attrs.field(init=False)
    reported_drained: int = attrs.field(init=False, default=0)
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)

    def __attrs_post_init__(self) -> None:
        self.left = self.total
        self.reported_at = self.started
        self._arm()

    def _arm(self) -> None:
        self._timer = self.clock.callLater(self.interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        self.report(self)
        self._arm()

    def cancel(self) -> None:
        """No more progress lines."""
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


@attrs.define
class _Outcome(Generic[T]):
    """
    The result of one Deferred, for any number of observers. The source's
    own chain ends here, so a failure nobody observed is not reported twice.
    """

    _done: bool = False
    _result: Any = None
    _observers: list[Deferred[T]] = attrs.field(factory=list)

    @classmethod
    def of(cls, source: Deferred[T]) -> _Outcome[T]:
        outcome: _Outcome[T] = cls()
        source.addBoth(outcome._finish)
        return outcome

    def _finish(self, result: Any) -> None:
        self._done, self._result = True, result
        observers, self._observers = self._observers, []
        for observer in observers:
            self._fire(observer)

    def _fire(self, observer: Deferred[T]) -> None:
        if isinstance(self._result, Failure):
            observer.errback(self._result)
        else:
            observer.callback(self._result)

    def observe(self) -> Deferred[T]:
        """A new Deferred that fires (or fails) as the source did."""
        observer: Deferred[T] = Deferred()
        if self._done:
            self._fire(observer)
        else:
            self._observers.append(observer)
        return observer
