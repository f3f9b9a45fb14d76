"""
A durable spool in front of a build store (promises P1, P2, P5, P6).

``SpooledBuilds`` is an ``IBuilds`` that answers ``submit`` only once the
build is on disk, then hands it to the ``IBuilds`` it wraps (``inner``,
normally ``KubeBuilds``) in the background, in order, one at a time, and
removes it once ``inner`` has it. An outage of ``inner`` costs nothing but
time: the records wait, and are retried with backoff until it is back.

One writer per directory: ``start()`` takes an exclusive ``flock`` on
``DIR/spool.lock`` and fails with ``SpoolLocked`` while another process holds
it. Put the directory on a persistent volume that supports ``flock`` and
``fsync`` (a local disk or a block-backed PersistentVolume; not an emptyDir
if the spool must survive the pod, and not NFS). Everything the spool owns is
named below; any other file in the directory (``projects.json``, say) is left
alone.

The directory
=============

``NNNNNNNNNNNNNNNNNNNN.<build name>.build``
    One record per build, in the order the builds were accepted (a
    20-digit sequence number). The build name in the file name makes a
    re-delivery of a queued build cheap to recognise.
``.NNNNNNNNNNNNNNNNNNNN.<build name>.build.tmp``
    A record being written. Its sender has not been answered.
``dead-letter/``
    Records ``inner`` refused for good (``BackendRejected``), each beside a
    ``<record>.reason.json`` giving the reason and the time. A record is
    still a valid record there: to try one again, stop brigade-cr and move
    it back.
``quarantine/``
    Records found damaged (bad checksum, truncated, unreadable), each beside
    a ``.reason.json``.
``spool.lock``
    The lock file; it holds the owner's PID, for the operator.
``.spool-probe.tmp``
    Briefly, after a write failed: a test write, to learn when the
    directory is writable again.

The record format
=================

::

    {"length":<body bytes>,"sha256":"<hex digest of the body>","v":1}\\n
    <body>

The body is a JSON object holding every field of ``Build`` as a string, the
payload in base64, so that it comes back byte for byte. A record is accepted
only if the header parses, ``v`` is 1, the body is exactly ``length`` bytes
and hashes to ``sha256``, the body holds a well-typed ``Build`` and that
build's name is the one in the file name: a truncated record, trailing
garbage or any flipped bit is detected.

Writing, draining, recovering
=============================

A record is written to its temporary file, fsynced, renamed into place and
the directory fsynced, all in a thread pool; only then does ``submit`` answer
(P1). The drainer submits the oldest record to ``inner``; once ``inner`` says
created or duplicate it unlinks the record and fsyncs the directory. A crash
between the two only means the build is submitted again after restart, and
``inner`` answers that with a duplicate (build names are idempotency keys).

On ``start()``: temporary files are deleted (their senders never got a 2xx);
every record is read and checked, damaged ones are moved to ``quarantine/``;
the rest are drained, oldest first.
"""

from __future__ import annotations

import base64
import binascii
import enum
import errno
import fcntl
import hashlib
import json
import os
import re
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, ClassVar, Generic, Mapping, TypeVar

import attrs
from twisted.internet.defer import CancelledError, Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .errors import BackendRejected, BackendUnavailable, InvalidText
from .fileio import BlockingIO, fsync_directory
from .interfaces import IBuilds
from .retry import Backoff
from .values import Build, Receipt

T = TypeVar("T")

RECORD_VERSION = 1
LOCK_FILE = "spool.lock"
DEAD_LETTER = "dead-letter"
QUARANTINE = "quarantine"
REASON_SUFFIX = ".reason.json"
PROBE_FILE = ".spool-probe.tmp"

# The steps ``at_step`` is called with, in the order they happen.
WRITE_STEPS = ("write:start", "write:temp-written", "write:temp-fsynced", "write:renamed", "write:dir-fsynced")
DRAIN_STEPS = ("drain:submitted", "drain:removed", "drain:dir-fsynced")
DEAD_LETTER_STEPS = ("dead-letter:reason-written", "dead-letter:moved")

# A build name as the spool accepts it: a DNS-1123 name short enough that
# the record's file name stays under the usual 255-byte limit. Build names
# are "brigade-worker-" and a ULID (41 characters).
_NAME = r"[a-z0-9](?:[-a-z0-9.]{0,198}[a-z0-9])?"
_BUILD_NAME = re.compile(_NAME)
_RECORD_FILE = re.compile(rf"(\d{{20}})\.({_NAME})\.build")
_TEMPORARY_FILE = re.compile(rf"\.(\d{{20}})\.({_NAME})\.build\.tmp")
_REQUIRED = ("project_id", "ulid", "event_type", "event_provider", "commit_ref", "payload")
# The header is a few dozen bytes; looking further for its end is pointless.
_HEADER_LIMIT = 512


class CorruptRecord(Exception):
    """A spool record failed its checks; ``args[0]`` says which (never its content)."""


class SpoolLocked(Exception):
    """Another process holds the spool directory's lock: one writer per directory."""


def _no_step(step: str) -> None:
    """The production ``at_step``: nothing to inject."""


# -- the record format ----------------------------------------------------------


def record_filename(sequence: int, build_name: str) -> str:
    """The file name of record number ``sequence`` for the build ``build_name``."""
    return f"{sequence:020d}.{build_name}.build"


def parse_record_filename(filename: str) -> tuple[int, str] | None:
    """``(sequence, build name)`` of a record's file name, or None for any other file."""
    match = _RECORD_FILE.fullmatch(filename)
    if match is None:
        return None
    return int(match.group(1)), match.group(2)


def encode_record(build: Build) -> bytes:
    """``build`` as a spool record: a checksummed header line, then the body."""
    fields: dict[str, str] = {}
    for field in attrs.fields(Build):
        value = getattr(build, field.name)
        fields[field.name] = base64.b64encode(value).decode("ascii") if field.name == "payload" else value
    # ensure_ascii (the default) keeps any str, lone surrogates included,
    # representable and restores it exactly.
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")
    header = {"v": RECORD_VERSION, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n" + body


def decode_record(data: bytes, expected_name: str | None = None) -> Build:
    """
    The ``Build`` in the record ``data``.

    Raises ``CorruptRecord`` unless every check passes (see the module
    docstring); with ``expected_name``, also when the build has another name.
    """
    end = data.find(b"\n", 0, _HEADER_LIMIT)
    if end < 0:
        raise CorruptRecord("no header line")
    try:
        header = json.loads(data[:end])
    except ValueError:
        raise CorruptRecord("unreadable header") from None
    if not isinstance(header, dict):
        raise CorruptRecord("unreadable header")
    version, length, digest = header.get("v"), header.get("length"), header.get("sha256")
    if type(version) is not int or version != RECORD_VERSION:
        raise CorruptRecord("unknown record version")
    if type(length) is not int or not isinstance(digest, str):
        raise CorruptRecord("incomplete header")
    body = data[end + 1 :]
    if len(body) != length:
        raise CorruptRecord(f"body is {len(body)} bytes where the header says {length}")
    if hashlib.sha256(body).hexdigest() != digest:
        raise CorruptRecord("checksum mismatch")
    try:
        fields = json.loads(body)
    except ValueError:
        raise CorruptRecord("unreadable body") from None
    build = _build_from_fields(fields)
    if expected_name is not None and build.name != expected_name:
        raise CorruptRecord("the record holds another build than its file name says")
    return build


def _build_from_fields(fields: Any) -> Build:
    known = {field.name for field in attrs.fields(Build)}
    if not isinstance(fields, dict) or not set(fields) <= known or not all(key in fields for key in _REQUIRED):
        raise CorruptRecord("body is not a build")
    if not all(isinstance(value, str) for value in fields.values()):
        raise CorruptRecord("body is not a build")
    try:
        payload = base64.b64decode(fields["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise CorruptRecord("payload is not base64") from None
    try:
        return Build(**{**fields, "payload": payload})
    except InvalidText:
        # Written before values refused unencodable text: it can never be
        # delivered, so it is quarantined rather than stopping the spool.
        raise CorruptRecord("body is not a valid build") from None


# -- blocking file operations (run in the thread pool) --------------------------------


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_record(directory: Path, filename: str, record: bytes, at_step: Callable[[str], None]) -> None:
    """
    Durably create ``directory/filename`` holding ``record``: temporary
    file, fsync, rename, directory fsync. Raises ``OSError`` when any step
    fails, having removed whatever it wrote (the caller will refuse the
    delivery, so no record may stay behind).
    """
    temporary = directory / f".{filename}.tmp"
    final = directory / filename
    renamed = False
    at_step("write:start")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, record)
            at_step("write:temp-written")
            os.fsync(fd)
            at_step("write:temp-fsynced")
        finally:
            os.close(fd)
        # Sequence numbers make every final name new, so this never replaces.
        os.rename(temporary, final)
        renamed = True
        at_step("write:renamed")
        fsync_directory(directory)
        at_step("write:dir-fsynced")
    except BaseException:
        for path in (final, temporary) if renamed else (temporary,):
            try:
                path.unlink()
            except OSError:
                pass
        raise


def read_record(path: Path, build_name: str) -> Build:
    """The build in the record at ``path``; ``CorruptRecord`` or ``OSError`` otherwise."""
    with path.open("rb") as f:
        data = f.read()
    return decode_record(data, build_name)


def remove_record(directory: Path, filename: str, at_step: Callable[[str], None]) -> None:
    """Unlink a drained record and fsync the directory, so it is not drained again."""
    try:
        (directory / filename).unlink()
    except FileNotFoundError:
        pass
    at_step("drain:removed")
    fsync_directory(directory)
    at_step("drain:dir-fsynced")


def probe_directory(directory: Path, size: int) -> None:
    """
    Write ``size`` bytes to a scratch file, fsync and remove it: can the
    directory take a record of that size now? Raises ``OSError`` if not.
    """
    path = directory / PROBE_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            _write_all(fd, bytes(size))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        path.unlink()


def _unused_name(place: Path, filename: str) -> str:
    # A reason with no record beside it is left by a crash between the two
    # steps of park_record: its name is free (the reason is rewritten).
    candidate, number = filename, 0
    while (place / candidate).exists():
        number += 1
        candidate = f"{filename}.{number}"
    return candidate


def park_record(
    directory: Path, filename: str, place: str, reason: Mapping[str, Any], at_step: Callable[[str], None]
) -> str:
    """
    Move the record ``filename`` into ``directory/place/`` beside a
    ``.reason.json`` holding ``reason``, and return the name it got there.

    The reason is made durable before the record moves: a crash in between
    leaves the record in the spool, to be handled again, rather than a record
    with no reason. Raises ``OSError``.
    """
    target = directory / place
    target.mkdir(mode=0o700, exist_ok=True)
    name = _unused_name(target, filename)
    text = json.dumps({**reason, "record": name}, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    temporary = target / f".{name}{REASON_SUFFIX}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, text)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, target / (name + REASON_SUFFIX))
    fsync_directory(target)
    at_step(f"{place}:reason-written")
    os.rename(directory / filename, target / name)
    at_step(f"{place}:moved")
    fsync_directory(target)
    fsync_directory(directory)
    return name


def _lock(directory: Path) -> int:
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise SpoolLocked(
                f"spool directory {directory} is in use by another process (pid {holder}); "
                "each spool directory takes one writer"
            ) from None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    return fd


@attrs.frozen
class Recovery:
    """What ``recover`` found: the lock it holds and the records to drain, oldest first."""

    lock_fd: int
    records: tuple[tuple[int, str, int], ...]  # (sequence, build name, size in bytes)
    discarded: tuple[str, ...]
    quarantined: tuple[tuple[str, str], ...]  # (file name, reason)


def recover(directory: Path, now: str, at_step: Callable[[str], None] = _no_step) -> Recovery:
    """
    Lock ``directory`` (creating it) and bring it to a known state: delete
    temporary records, check every record and move damaged ones to
    ``quarantine/``. Raises ``SpoolLocked`` or ``OSError``, holding no lock.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _lock(directory)
    try:
        records: list[tuple[int, str, int]] = []
        discarded: list[str] = []
        quarantined: list[tuple[str, str]] = []
        for filename in sorted(os.listdir(directory)):
            path = directory / filename
            if not path.is_file() or path.is_symlink():
                continue
            if _TEMPORARY_FILE.fullmatch(filename):
                path.unlink()
                discarded.append(filename)
                continue
            if filename == PROBE_FILE:
                path.unlink()
                continue
            parsed = parse_record_filename(filename)
            if parsed is None:
                continue  # not ours: the lock, a project cache, an operator's note
            sequence, name = parsed
            try:
                data = path.read_bytes()
                decode_record(data, name)
            except (CorruptRecord, OSError) as e:
                # A record that cannot be read (EIO) is as good as damaged,
                # and must not keep the rest from being drained.
                problem = str(e) if isinstance(e, CorruptRecord) else f"unreadable: {e.strerror}"
                reason = {"reason": problem, "time": now, "build": name}
                park_record(directory, filename, QUARANTINE, reason, at_step)
                quarantined.append((filename, problem))
                continue
            records.append((sequence, name, len(data)))
        if discarded:
            fsync_directory(directory)
        return Recovery(fd, tuple(sorted(records)), tuple(discarded), tuple(quarantined))
    except BaseException:
        os.close(fd)
        raise


# -- the spool --------------------------------------------------------------------


@attrs.frozen
class SpoolStats:
    """
    A snapshot for logs and metrics. ``queued``/``queued_bytes`` are records
    on disk (or being written); the rest count events since ``start()``.
    """

    queued: int
    queued_bytes: int
    created: int
    duplicates: int
    dead_lettered: int
    quarantined: int
    discarded: int
    accepting: bool


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


@attrs.define(eq=False)
class _Entry:
    sequence: int
    name: str
    size: int
    state: _State = _State.WRITING
    attempts: int = 0
    # submits waiting to learn whether the build got created
    waiters: list[Deferred[Receipt]] = attrs.field(factory=list)
    # submits of the same build waiting for this record's write to finish
    written: list[Deferred[None]] = attrs.field(factory=list)

    @property
    def filename(self) -> str:
        return record_filename(self.sequence, self.name)


class _Halted(Exception):
    """The drainer was told to stop."""


def _settle(waiter: Deferred[T], outcome: T | BaseException) -> None:
    if waiter.called:
        return
    if isinstance(outcome, BaseException):
        waiter.errback(Failure(outcome))
    else:
        waiter.callback(outcome)


@implementer(IBuilds)
@attrs.define(repr=False)
class SpooledBuilds:
    """
    Builds recorded durably in ``directory``, then created by ``inner`` in
    the order they were accepted.

    ``io`` runs the blocking file operations (``ThreadedIO`` in production);
    ``clock`` times the backoff and the wait for an acknowledgement. A
    submit waits up to ``ack_wait`` seconds for ``inner`` to create the build
    so that, while ``inner`` is healthy, senders learn the build exists; it
    stops waiting as soon as ``inner`` fails (the record is safe). The spool
    refuses new records beyond ``max_records`` records or ``max_bytes``
    bytes. ``at_step`` is called with each step of the write, drain and
    park protocols (``WRITE_STEPS``, ``DRAIN_STEPS``, ``DEAD_LETTER_STEPS``,
    ``quarantine:...``) as it completes: tests crash or fail there;
    production leaves it alone.
    """

    directory: Path
    inner: IBuilds
    clock: IReactorTime
    io: BlockingIO
    backoff: Backoff = attrs.field(factory=Backoff)
    max_records: int = 10_000
    max_bytes: int = 256 * 1024 * 1024
    ack_wait: float = 2.0
    # What a refused sender is told to wait: the spool drains at the API's
    # pace, and a full spool does not empty in a second.
    refuse_retry_after: int = 30
    # After a failed write, how often to test whether the directory is
    # writable again. Without this a pod made unready by a failed write would
    # get no traffic, so no write, and stay unready for ever.
    probe_interval: float = 5.0
    at_step: Callable[[str], None] = _no_step

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
    _store_failing: bool = attrs.field(init=False, default=False)
    _halted: bool = attrs.field(init=False, default=False)
    _wake: Deferred[None] | None = attrs.field(init=False, default=None)
    _interruptible: Deferred[Any] | None = attrs.field(init=False, default=None)
    _starting: _Outcome[None] | None = attrs.field(init=False, default=None)
    _drainer: Deferred[None] | None = attrs.field(init=False, default=None)
    _stopping: _Outcome[None] | None = attrs.field(init=False, default=None)
    _created: int = attrs.field(init=False, default=0)
    _duplicates: int = attrs.field(init=False, default=0)
    _dead_lettered: int = attrs.field(init=False, default=0)
    _quarantined: int = attrs.field(init=False, default=0)
    _discarded: int = attrs.field(init=False, default=0)

    log: ClassVar[Logger] = Logger()

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
        for sequence, name, size in recovery.records:
            entry = _Entry(sequence, name, size, state=_State.QUEUED)
            self._queue.append(entry)
            self._names[name] = entry
            self._bytes += size
        if recovery.records:
            self._next_sequence = recovery.records[-1][0] + 1
        self._phase = _Phase.RUNNING
        self.log.info(
            "Spool {directory} started: {queued} record(s) to drain",
            directory=str(self.directory),
            queued=len(self._queue),
            discarded=len(recovery.discarded),
            quarantined=len(recovery.quarantined),
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
        if self._interruptible is not None:
            self._interruptible.cancel()

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
        return SpoolStats(
            queued=len(self._queue),
            queued_bytes=self._bytes,
            created=self._created,
            duplicates=self._duplicates,
            dead_lettered=self._dead_lettered,
            quarantined=self._quarantined,
            discarded=self._discarded,
            accepting=self.accepting(),
        )

    # -- submitting ----------------------------------------------------------------

    def submit(self, build: Build) -> Deferred[Receipt]:
        """
        Record ``build`` durably, then wait (up to ``ack_wait``) for ``inner``
        to create it.

        Fires with ``Receipt(name, duplicate=...)`` when ``inner`` created the
        build (or already had it) in that time; with ``Receipt(name,
        queued=True)`` when the record is durable but the build not created
        yet (``inner`` failing, slow, or busy with older records); with
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
        if not _BUILD_NAME.fullmatch(name):
            raise BackendRejected("the build name cannot be spooled")
        existing = self._names.get(name)
        if existing is not None:
            if existing.state is _State.WRITING:
                await self._written(existing)
            self.log.info("Build {build} is already queued", build=name)
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
        entry = _Entry(self._next_sequence, name, len(record))
        self._next_sequence += 1
        self._queue.append(entry)
        self._names[name] = entry
        self._bytes += entry.size
        try:
            await self.io.run(write_record, self.directory, entry.filename, record, self.at_step)
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
        entry.state = _State.QUEUED
        self._write_failed = False
        for waiter in entry.written:
            _settle(waiter, None)
        entry.written.clear()
        queued = Receipt(name, queued=True)
        if self._store_failing or self._phase is not _Phase.RUNNING or self.ack_wait <= 0:
            self._poke()
            return queued
        # Register before waking the drainer: with synchronous I/O it may
        # finish this very record before _poke returns.
        acknowledged = self._acknowledgement(entry)
        self._poke()
        return await acknowledged

    def _written(self, entry: _Entry) -> Deferred[None]:
        if entry.state is _State.QUEUED:
            return succeed(None)
        if entry.state is _State.ABANDONED:
            return fail(BackendUnavailable("cannot write to the spool", retry_after=self.refuse_retry_after))
        waiter: Deferred[None] = Deferred()
        entry.written.append(waiter)
        return waiter

    def _abandon(self, entry: _Entry, error: BackendUnavailable) -> None:
        entry.state = _State.ABANDONED
        self._forget(entry)
        for waiter in entry.written:
            _settle(waiter, BackendUnavailable(error.reason, error.retry_after))
        entry.written.clear()
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
        entry.waiters.append(waiter)
        return waiter

    def _answer(self, entry: _Entry, outcome: Receipt | BaseException) -> None:
        waiters, entry.waiters = entry.waiters, []
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
        self._interruptible = waiting
        try:
            return await waiting
        except CancelledError:
            if self._halted:
                raise _Halted() from None
            raise
        finally:
            self._interruptible = None

    async def _drain(self) -> None:
        errors = 0
        try:
            while not self._halted:
                try:
                    if self._queue and self._queue[0].state is _State.QUEUED:
                        await self._drain_one(self._queue[0])
                        errors = 0
                        continue
                    if not self._queue and self._phase is not _Phase.RUNNING:
                        return  # stopping, and nothing left
                    # Idle, or the oldest record is still being written: in
                    # order means waiting for it.
                    self._wake = Deferred()
                    await self._interruptibly(self._wake)
                except _Halted:
                    raise
                except Exception:
                    # A bug here must not end draining for the life of the
                    # process: report it, pause, carry on.
                    self.log.failure("The spool drainer failed unexpectedly; carrying on")
                    await self._interruptibly(deferLater(self.clock, self.backoff.delay(errors)))
                    errors += 1
        except _Halted:
            return

    async def _drain_one(self, entry: _Entry) -> None:
        try:
            build = await self.io.run(read_record, self.directory / entry.filename, entry.name)
        except CorruptRecord as e:
            await self._park_damaged(entry, str(e))
            return
        except FileNotFoundError:
            self.log.error("The spool record {record} vanished before it was drained", record=entry.filename)
            self._answer(entry, BackendUnavailable("the spooled record vanished", self.refuse_retry_after))
            self._forget(entry)
            return
        except Exception:
            self.log.failure("Cannot read the spool record {record}", record=entry.filename)
            await self._retry_later(entry, None)
            return
        await self._hand_over(entry, build)

    async def _hand_over(self, entry: _Entry, build: Build) -> None:
        fields = {"build": entry.name, "project": build.project_id, "record": entry.filename}
        while True:
            if self._halted:
                raise _Halted()
            try:
                receipt: Receipt = await self._interruptibly(maybeDeferred(self.inner.submit, build))
            except _Halted:
                raise
            except BackendRejected as e:
                await self._dead_letter(entry, build, e.reason)
                return
            except BackendUnavailable as e:
                await self._retry_later(entry, e.retry_after, e.reason, fields)
                continue
            except Exception:
                # A bug or a surprise in inner: keep the record and try again
                # rather than lose it.
                self.log.failure(
                    "Submitting build {build} from the spool failed unexpectedly",
                    build=entry.name,
                    record=entry.filename,
                )
                await self._retry_later(entry, None)
                continue
            break
        self.at_step("drain:submitted")
        self._store_failing = False
        entry.attempts = 0
        if receipt.duplicate:
            self._duplicates += 1
        else:
            self._created += 1
        self.log.info(
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
        try:
            await self.io.run(remove_record, self.directory, entry.filename, self.at_step)
        except Exception:
            self.log.failure(
                "Cannot remove the spool record {record}: after a restart it is submitted again, as a duplicate",
                build=entry.name,
                record=entry.filename,
            )
        self._forget(entry)
        self._write_failed = False  # space was freed

    async def _retry_later(
        self, entry: _Entry, retry_after: int | None, reason: str = "", fields: Mapping[str, Any] | None = None
    ) -> None:
        delay = self.backoff.delay(entry.attempts, retry_after)
        entry.attempts += 1
        if reason:
            self.log.warn(
                "Build {build} stays spooled; retrying in {delay:.1f}s: {reason}",
                delay=delay,
                reason=reason,
                attempt=entry.attempts,
                retry_after=retry_after,
                **(fields or {"build": entry.name}),
            )
        self._store_failing = True
        # Nobody should wait on a store that is failing: the records are safe.
        self._release_waiters()
        await self._interruptibly(deferLater(self.clock, delay))

    async def _dead_letter(self, entry: _Entry, build: Build, reason: str) -> None:
        self._answer(entry, BackendRejected(reason))
        details = {
            "reason": reason,
            "time": self._now(),
            "build": entry.name,
            "project": build.project_id,
            "event_type": build.event_type,
            "event_provider": build.event_provider,
        }
        try:
            parked = await self.io.run(park_record, self.directory, entry.filename, DEAD_LETTER, details, self.at_step)
        except Exception:
            self.log.failure("Cannot move the refused build {build} to the dead-letter directory", build=entry.name)
            # It stays queued: submitted again, refused again, parked then.
            await self._retry_later(entry, None)
            return
        self._dead_lettered += 1
        self._store_failing = False
        self.log.error(
            "Build {build} for {project} was refused and parked in {dead_letter}: {reason}",
            build=entry.name,
            project=build.project_id,
            reason=reason,
            dead_letter=str(self.directory / DEAD_LETTER / parked),
        )
        self._forget(entry)

    async def _park_damaged(self, entry: _Entry, reason: str) -> None:
        details = {"reason": reason, "time": self._now(), "build": entry.name}
        try:
            parked = await self.io.run(park_record, self.directory, entry.filename, QUARANTINE, details, self.at_step)
        except Exception:
            self.log.failure("Cannot quarantine the damaged spool record {record}", record=entry.filename)
            await self._retry_later(entry, None)
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
