"""
The spool's blocking file steps, run in a thread pool (``fileio.BlockingIO``):
write, read and remove a record, park one in ``dead-letter/`` or
``quarantine/``, lock and recover the directory, probe whether it is
writable. Each is crash-consistent: a kill at any step (``at_step`` names
them, for the crash tests) leaves every acknowledged record intact.

The directory
=============

``NNNNNNNNNNNNNNNNNNNN.<build name>.build``
    One record per build (``record.py``).
``.NNNNNNNNNNNNNNNNNNNN.<build name>.build.tmp``
    A record being written. Its sender has not been answered; ``recover``
    deletes it.
``dead-letter/``
    Records ``inner`` refused for good, or that failed unexpectedly too
    often, each beside a ``<record>.reason.json`` saying why. A record is
    still a valid record there: to try one again, stop brigade-cr and move
    it back.
``quarantine/``
    Records found damaged, each beside a ``.reason.json``.
``spool.lock``
    The lock file (an exclusive ``flock``); it holds the owner's PID, for the
    operator.
``.spool-probe.tmp``
    Briefly, after a write failed: a test write, to learn when the
    directory is writable again.

Any other file in the directory (``projects.json``, say) is left alone.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import attrs

from brigade_cr.core.values import Build
from brigade_cr.stores.fileio import fsync_directory
from brigade_cr.stores.spool.record import (
    CorruptRecord,
    decode_record,
    is_temporary_filename,
    parse_record_filename,
    temporary_filename,
)

LOCK_FILE = "spool.lock"
DEAD_LETTER = "dead-letter"
QUARANTINE = "quarantine"
REASON_SUFFIX = ".reason.json"
PROBE_FILE = ".spool-probe.tmp"

# The steps ``at_step`` is called with, in the order they happen.
WRITE_STEPS = ("write:start", "write:temp-written", "write:temp-fsynced", "write:renamed", "write:dir-fsynced")
DRAIN_STEPS = ("drain:submitted", "drain:removed", "drain:dir-fsynced")
DEAD_LETTER_STEPS = ("dead-letter:reason-written", "dead-letter:moved")


class SpoolLocked(Exception):
    """Another process holds the spool directory's lock: one writer per directory."""


# Bytes per read of a record: most records are read whole by the first.
_READ_CHUNK = 64 * 1024


def no_step(step: str) -> None:
    """The production ``at_step``: nothing to inject."""


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
    (outcome,) = write_records(directory, [(filename, record)], at_step)
    if outcome is not None:
        raise outcome


def _discard(*paths: str) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except OSError:
            pass


def write_records(
    directory: Path, batch: Sequence[tuple[str, bytes]], at_step: Callable[[str], None]
) -> list[BaseException | None]:
    """
    Durably create each ``directory/filename`` of ``batch`` holding its
    record, with one directory fsync for the whole batch (group commit):
    each record's temporary file is written and fsynced, then renamed into
    place, then the directory is fsynced once. Returns, per record in
    order, None when it is durable or the exception that kept it from being
    so; a record that failed leaves nothing behind. A failed directory
    fsync fails every record that was renamed (they are removed again: no
    sender may be answered for a record whose name may not survive a
    crash). ``at_step`` is called with each of ``WRITE_STEPS`` per record,
    ``write:dir-fsynced`` once per record after the one fsync.
    """
    outcomes: list[BaseException | None] = [None] * len(batch)
    renamed: list[int] = []
    # Joined as text: a pathlib join per name was a measurable share of the
    # writing thread's time, which it holds the interpreter's lock for.
    base = os.fspath(directory)
    for index, (filename, record) in enumerate(batch):
        temporary = os.path.join(base, temporary_filename(filename))
        final = os.path.join(base, filename)
        try:
            at_step("write:start")
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
            renamed.append(index)
            at_step("write:renamed")
        except Exception as e:
            outcomes[index] = e
            if renamed and renamed[-1] == index:
                renamed.pop()
                _discard(final, temporary)
            else:
                _discard(temporary)
    if not renamed:
        return outcomes
    try:
        fsync_directory(directory)
        for _ in renamed:
            at_step("write:dir-fsynced")
    except Exception as e:
        for index in renamed:
            outcomes[index] = e
            _discard(os.path.join(base, batch[index][0]))
    return outcomes


def read_record(path: Path, build_name: str) -> Build:
    """The build in the record at ``path``; ``CorruptRecord`` or ``OSError`` otherwise."""
    # os.read, not a file object: a file object's open and read make nine
    # system calls where four do, and each gives up the interpreter's lock
    # (docs/performance.md, "The log's writes, and a yardstick that does not
    # drift").
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return decode_record(b"".join(chunks), build_name)


def read_records(batch: Sequence[tuple[Path, str]]) -> list[Build | BaseException]:
    """
    ``read_record(path, build_name)`` of each pair of ``batch`` (one trip to
    the thread pool for several records): per record in order, its build or
    the exception reading it raised.
    """
    outcomes: list[Build | BaseException] = []
    for path, build_name in batch:
        try:
            outcomes.append(read_record(path, build_name))
        except Exception as e:
            outcomes.append(e)
    return outcomes


def remove_record(directory: Path, filename: str, at_step: Callable[[str], None]) -> None:
    """Unlink a drained record and fsync the directory, so it is not drained again."""
    (outcome,) = remove_records(directory, [filename], at_step)
    if outcome is not None:
        raise outcome


def remove_records(
    directory: Path, filenames: Sequence[str], at_step: Callable[[str], None]
) -> list[BaseException | None]:
    """
    Unlink drained records, then fsync the directory once for all of them
    (group commit). Returns, per record, None or the exception that kept it
    from being removed durably (the record is then drained again after a
    restart, as a duplicate). A record already gone counts as removed.
    """
    outcomes: list[BaseException | None] = [None] * len(filenames)
    base = os.fspath(directory)
    for index, filename in enumerate(filenames):
        try:
            os.unlink(os.path.join(base, filename))
        except FileNotFoundError:
            pass
        except Exception as e:
            outcomes[index] = e
            continue
        at_step("drain:removed")
    if all(outcome is not None for outcome in outcomes):
        return outcomes
    try:
        fsync_directory(directory)
    except Exception as e:
        return [outcome if outcome is not None else e for outcome in outcomes]
    for outcome in outcomes:
        if outcome is None:
            at_step("drain:dir-fsynced")
    return outcomes


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
    # (sequence, build name, size in bytes, modification time): the time
    # stands in for when the record was accepted.
    records: tuple[tuple[int, str, int, float], ...]
    discarded: tuple[str, ...]
    quarantined: tuple[tuple[str, str], ...]  # (file name, reason)


def recover(directory: Path, now: str, at_step: Callable[[str], None] = no_step) -> Recovery:
    """
    Lock ``directory`` (creating it) and bring it to a known state: delete
    temporary records, check every record and move damaged ones to
    ``quarantine/``. Raises ``SpoolLocked`` or ``OSError``, holding no lock.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _lock(directory)
    try:
        records: list[tuple[int, str, int, float]] = []
        discarded: list[str] = []
        quarantined: list[tuple[str, str]] = []
        for filename in sorted(os.listdir(directory)):
            path = directory / filename
            if not path.is_file() or path.is_symlink():
                continue
            if is_temporary_filename(filename):
                path.unlink()
                discarded.append(filename)
                continue
            if filename == PROBE_FILE:
                path.unlink()
                continue
            parsed = parse_record_filename(filename)
            if parsed is None:
                continue  # not ours: the lock, the known projects, an operator's note
            sequence, name = parsed
            try:
                data = path.read_bytes()
                modified = path.stat().st_mtime
                decode_record(data, name)
            except (CorruptRecord, OSError) as e:
                # A record that cannot be read (EIO) is as good as damaged,
                # and must not keep the rest from being drained.
                problem = str(e) if isinstance(e, CorruptRecord) else f"unreadable: {e.strerror}"
                reason = {"reason": problem, "time": now, "build": name}
                park_record(directory, filename, QUARANTINE, reason, at_step)
                quarantined.append((filename, problem))
                continue
            records.append((sequence, name, len(data), modified))
        if discarded:
            fsync_directory(directory)
        return Recovery(fd, tuple(sorted(records)), tuple(discarded), tuple(quarantined))
    except BaseException:
        os.close(fd)
        raise
