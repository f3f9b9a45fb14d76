"""
The spool's blocking file steps, run in a thread pool (``fileio.BlockingIO``):
write, read and remove a record, park one in ``dead-letter/`` or
``quarantine/``, lock and recover the directory, probe whether it is
writable. Each is crash-consistent: a kill at any step (``at_step`` names
them, for the crash tests) leaves every acknowledged record intact.

The directory
=============

``NNNNNNNNNNNNNNNNNNNN.<build name>.build``
    A record written alone (``record.py``).
``NNNNNNNNNNNNNNNNNNNN.batch``
    The records of one write batch, written together: one file, one fsync
    (``record.py``). It is removed once every record in it has been handed
    over or parked.
``.NNNNNNNNNNNNNNNNNNNN.<build name>.build.tmp``, ``.NNNNNNNNNNNNNNNNNNNN.batch.tmp``
    A record or batch being written. Its senders have not been answered;
    ``recover`` deletes it.
``dead-letter/``
    Records ``inner`` refused for good, or that failed unexpectedly too
    often, each as a file of its own (``<sequence>.<build name>.build``,
    also when it came from a batch) beside a ``<record>.reason.json``
    saying why. A record is still a valid record there: to try one again,
    stop brigade-cr and move it back.
``quarantine/``
    Records found damaged, each beside a ``.reason.json``; from a batch
    file, each damaged stretch of it as ``<batch>.<offset>.damaged``.
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
    batch_filename,
    decode_record,
    encode_batch,
    is_temporary_filename,
    parse_batch_filename,
    parse_record_filename,
    record_filename,
    split_batch,
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


@attrs.frozen
class Placement:
    """Where a record written in a batch is: ``length`` bytes at ``offset`` of the batch file ``filename``."""

    filename: str
    offset: int
    length: int


# Bytes per read of a record: most records are read whole by the first.
_READ_CHUNK = 64 * 1024
# The most a batch file holds (the records of a larger write batch go to
# several): recovery reads a batch file whole, and a batch of 256 records at
# the largest body would otherwise be some 90 MB.
BATCH_FILE_BYTES = 8 * 1024 * 1024


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
    (outcome,) = write_record_files(directory, [(filename, record)], at_step)
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
) -> list[BaseException | Placement | None]:
    """
    Durably store the records of ``batch``, each given with the name of its
    own record file (``record_filename``), in sequence order. Returns, per
    record in order, None when it is durable in its own file, a
    ``Placement`` when it is durable in a batch file, or the exception that
    kept it from being durable; a record that failed leaves nothing behind.

    A batch whose sequence numbers do not follow each other is written as
    record files (``write_record_files``). Any other is cut, in order, into
    runs of at most ``BATCH_FILE_BYTES`` (a record larger than that is a run
    of its own), and each run of several records is one batch file
    (``record.py``): temporary file, fsync, rename, directory fsync, each
    once for all of its records, which succeed or fail together; a run of
    one record is a record file. ``at_step`` is called with each of
    ``WRITE_STEPS`` once per file written, ``write:dir-fsynced`` once per
    record after the directory's fsync.
    """
    sequences = [parse_record_filename(filename) for filename, _ in batch]
    first = sequences[0][0] if sequences and sequences[0] is not None else None
    if first is None or any(found is None or found[0] != first + index for index, found in enumerate(sequences)):
        return list(write_record_files(directory, batch, at_step))
    outcomes: list[BaseException | Placement | None] = []
    start = 0
    while start < len(batch):
        end, size = start + 1, len(batch[start][1])
        while end < len(batch) and size + len(batch[end][1]) <= BATCH_FILE_BYTES:
            size += len(batch[end][1])
            end += 1
        if end - start == 1:
            outcomes.extend(write_record_files(directory, batch[start:end], at_step))
        else:
            records = [record for _, record in batch[start:end]]
            outcomes.extend(_write_batch_file(directory, batch_filename(first + start), records, at_step))
        start = end
    return outcomes


def _put_file(base: str, filename: str, data: bytes, at_step: Callable[[str], None]) -> None:
    # The write steps of one record or batch file, up to its rename. On
    # failure the caller discards both names: sequence numbers make every
    # final name new, so neither can be another record's.
    temporary = os.path.join(base, temporary_filename(filename))
    at_step("write:start")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        at_step("write:temp-written")
        os.fsync(fd)
        at_step("write:temp-fsynced")
    finally:
        os.close(fd)
    os.rename(temporary, os.path.join(base, filename))
    at_step("write:renamed")


def _discard_file(base: str, filename: str) -> None:
    _discard(os.path.join(base, filename), os.path.join(base, temporary_filename(filename)))


def _write_batch_file(
    directory: Path, filename: str, records: list[bytes], at_step: Callable[[str], None]
) -> list[BaseException | Placement | None]:
    data, places = encode_batch(records)
    base = os.fspath(directory)
    try:
        _put_file(base, filename, data, at_step)
        fsync_directory(directory)
        for _ in records:
            at_step("write:dir-fsynced")
    except Exception as e:
        _discard_file(base, filename)
        return [e] * len(records)
    return [Placement(filename, offset, length) for offset, length in places]


def write_record_files(
    directory: Path, batch: Sequence[tuple[str, bytes]], at_step: Callable[[str], None]
) -> list[BaseException | None]:
    """
    Durably create each ``directory/filename`` of ``batch`` holding its
    record, with one directory fsync for the whole batch: each record's
    temporary file is written and fsynced, then renamed into place, then
    the directory is fsynced once. Returns, per record in order, None when
    it is durable or the exception that kept it from being so; a record
    that failed leaves nothing behind. A failed directory fsync fails every
    record that was renamed (they are removed again: no sender may be
    answered for a record whose name may not survive a crash). ``at_step``
    is called with each of ``WRITE_STEPS`` per record, ``write:dir-fsynced``
    once per record after the one fsync.
    """
    outcomes: list[BaseException | None] = [None] * len(batch)
    renamed: list[int] = []
    # Joined as text: a pathlib join per name was a measurable share of the
    # writing thread's time, which it holds the interpreter's lock for.
    base = os.fspath(directory)
    for index, (filename, record) in enumerate(batch):
        try:
            _put_file(base, filename, record, at_step)
        except Exception as e:
            outcomes[index] = e
            _discard_file(base, filename)
            continue
        renamed.append(index)
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


def read_slice(path: Path, offset: int, length: int) -> bytes:
    """The ``length`` bytes at ``offset`` of the file ``path`` (fewer if it is shorter); ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while length > 0 and (chunk := os.pread(fd, min(length, _READ_CHUNK), offset)):
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def read_records(batch: Sequence[tuple[Path, str, Placement | None]]) -> list[Build | BaseException]:
    """
    The build of each ``(path, build name, placement)`` of ``batch`` (one
    trip to the thread pool for several records): the record file at
    ``path`` (``read_record``) when ``placement`` is None, else the record
    at ``placement`` in the batch file at ``path``. Per record in order, its
    build or the exception reading it raised (``CorruptRecord``,
    ``OSError``).
    """
    outcomes: list[Build | BaseException] = []
    for path, build_name, placement in batch:
        try:
            if placement is None:
                outcomes.append(read_record(path, build_name))
            else:
                data = read_slice(path, placement.offset, placement.length)
                outcomes.append(decode_record(data, build_name))
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


def _durable_file(path: Path, data: bytes, modified: float | None = None) -> None:
    # Written beside its name, fsynced, renamed into place: whole or absent.
    # With ``modified``, the file keeps that modification time (a batch
    # file's stands in for when its records were accepted).
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, data)
        if modified is not None:
            os.utime(fd, (modified, modified))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, path)


def _write_reason(directory: Path, filename: str, place: str, reason: Mapping[str, Any]) -> tuple[Path, str]:
    # The durable reason for what is about to be parked as ``filename`` in
    # ``place``: the parking place and the name it gets there.
    target = directory / place
    target.mkdir(mode=0o700, exist_ok=True)
    name = _unused_name(target, filename)
    text = json.dumps({**reason, "record": name}, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    _durable_file(target / (name + REASON_SUFFIX), text)
    fsync_directory(target)
    return target, name


def park_record(
    directory: Path, filename: str, place: str, reason: Mapping[str, Any], at_step: Callable[[str], None]
) -> str:
    """
    Move the record file ``filename`` into ``directory/place/`` beside a
    ``.reason.json`` holding ``reason``, and return the name it got there.

    The reason is made durable before the record moves: a crash in between
    leaves the record in the spool, to be handled again, rather than a record
    with no reason. Raises ``OSError``.
    """
    target, name = _write_reason(directory, filename, place, reason)
    at_step(f"{place}:reason-written")
    os.rename(directory / filename, target / name)
    at_step(f"{place}:moved")
    fsync_directory(target)
    fsync_directory(directory)
    return name


def park_bytes(
    directory: Path, data: bytes, filename: str, place: str, reason: Mapping[str, Any], at_step: Callable[[str], None]
) -> str:
    """
    Write ``data`` (a record, or a damaged stretch of a batch file) durably
    into ``directory/place/`` as ``filename`` beside a ``.reason.json``
    holding ``reason``, and return the name it got there. The caller then
    lets go of the batch file it came from; a crash before that leaves it
    there too, to be handled again (parked a second time, under another
    name, if it fails again). Raises ``OSError``.
    """
    target, name = _write_reason(directory, filename, place, reason)
    at_step(f"{place}:reason-written")
    _durable_file(target / name, data)
    at_step(f"{place}:moved")
    fsync_directory(target)
    return name


def park_slice(
    directory: Path,
    placement: Placement,
    filename: str,
    place: str,
    reason: Mapping[str, Any],
    at_step: Callable[[str], None],
) -> str:
    """``park_bytes`` of the record at ``placement`` (read whatever its state)."""
    data = read_slice(directory / placement.filename, placement.offset, placement.length)
    return park_bytes(directory, data, filename, place, reason, at_step)


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
class Found:
    """
    A record ``recover`` found: its sequence number, build name, size in
    bytes, and its file's modification time (which stands in for when it
    was accepted); ``filename`` is its own record file's name, or the name
    it would have if parked when it is at ``placement`` in a batch file.
    """

    sequence: int
    name: str
    size: int
    modified: float
    filename: str
    placement: Placement | None = None


@attrs.frozen
class Recovery:
    """What ``recover`` found: the lock it holds and the records to drain, oldest first."""

    lock_fd: int
    # Each with a sequence number of its own, oldest first.
    records: tuple[Found, ...]
    discarded: tuple[str, ...]
    quarantined: tuple[tuple[str, str], ...]  # (file name, reason)
    # Beyond every sequence number any file in the directory has or implies:
    # new files never take an existing name.
    next_sequence: int = 1


def recover(directory: Path, now: str, at_step: Callable[[str], None] = no_step) -> Recovery:
    """
    Lock ``directory`` (creating it) and bring it to a known state: delete
    temporary records, check every record and move damaged ones to
    ``quarantine/``. Raises ``SpoolLocked`` or ``OSError``, holding no lock.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = _lock(directory)
    try:
        records: list[Found] = []
        discarded: list[str] = []
        quarantined: list[tuple[str, str]] = []
        highest = 0
        changed = False
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
            first = parse_batch_filename(filename)
            if first is not None:
                found, last, batch_changed = _recover_batch(directory, filename, first, now, quarantined, at_step)
                records.extend(found)
                highest = max(highest, last)
                changed = changed or batch_changed
                continue
            parsed = parse_record_filename(filename)
            if parsed is None:
                continue  # not ours: the lock, the known projects, an operator's note
            sequence, name = parsed
            highest = max(highest, sequence)
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
            records.append(Found(sequence, name, len(data), modified, filename))
        if discarded or changed:
            fsync_directory(directory)
        unique, highest = _unique_sequences(records, highest)
        return Recovery(fd, unique, tuple(discarded), tuple(quarantined), highest + 1)
    except BaseException:
        os.close(fd)
        raise


def _recover_batch(
    directory: Path,
    filename: str,
    first: int,
    now: str,
    quarantined: list[tuple[str, str]],
    at_step: Callable[[str], None],
) -> tuple[list[Found], int, bool]:
    # The intact records of one batch file; each damaged stretch is copied
    # to quarantine/, then the file is rewritten with its intact records
    # alone (so that the next start does not copy the same damage again), or
    # removed if it has none. Returns the records, the highest sequence
    # number the file implies, and whether the directory changed.
    path = directory / filename
    try:
        data = path.read_bytes()
        modified = path.stat().st_mtime
    except OSError as e:
        problem = f"unreadable: {e.strerror}"
        park_record(directory, filename, QUARANTINE, {"reason": problem, "time": now}, at_step)
        quarantined.append((filename, problem))
        return [], first, False
    slots, damaged = split_batch(data)
    for offset, length in damaged:
        problem = "a damaged stretch of a batch file"
        reason = {"reason": problem, "time": now, "batch": filename, "offset": offset, "length": length}
        name = park_bytes(
            directory, data[offset : offset + length], f"{filename}.{offset}.damaged", QUARANTINE, reason, at_step
        )
        quarantined.append((name, problem))
    # A file of n lines holds at most n // 2 + 1 records' numbers.
    last = first + max(data.count(b"\n") // 2, slots[-1].index if slots else 0)
    if not slots:
        path.unlink()
        return [], last, True
    if damaged:
        # Renamed over the old one: a crash leaves either. The records'
        # numbers close up, still in order and within the file's.
        data, places = encode_batch([data[slot.offset : slot.offset + slot.length] for slot in slots])
        _durable_file(path, data, modified)
        slots = [
            attrs.evolve(slot, index=index, offset=offset)
            for index, (slot, (offset, _)) in enumerate(zip(slots, places, strict=True))
        ]
    found = [
        Found(
            first + slot.index,
            slot.build.name,
            slot.length,
            modified,
            record_filename(first + slot.index, slot.build.name),
            Placement(filename, slot.offset, slot.length),
        )
        for slot in slots
    ]
    return found, last, bool(damaged)


def _unique_sequences(records: list[Found], highest: int) -> tuple[tuple[Found, ...], int]:
    # Oldest first, every sequence number once. Two records may claim the
    # same one only by accident (a record moved back from dead-letter/ after
    # its number was used again, a batch file damaged in its newlines): the
    # later claimant gets a new number after all the others, so it is
    # drained last but never confused with another.
    ordered = sorted(records, key=lambda found: (found.sequence, found.filename, found.placement is not None))
    unique: list[Found] = []
    seen: set[int] = set()
    for found in ordered:
        if found.sequence in seen:
            highest += 1
            found = attrs.evolve(found, sequence=highest)
        seen.add(found.sequence)
        unique.append(found)
    unique.sort(key=lambda found: found.sequence)
    return tuple(unique), highest
