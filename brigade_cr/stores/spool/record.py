"""
The spool's record format and file-name grammar: pure functions, no I/O.

A record is::

    {"length":<body bytes>,"sha256":"<hex digest of the body>","v":1}\\n
    <body>

It is kept in one of two kinds of file. A record written alone is a file of
its own, ``NNNNNNNNNNNNNNNNNNNN.<build name>.build`` (a 20-digit sequence
number, so names sort in the order the builds were accepted). Records
written together (one write batch, ``commit.py``) share a batch file,
``NNNNNNNNNNNNNNNNNNNN.batch``, named by the first one's sequence number:
each record followed by a newline, in sequence order, so the k-th record
(counted from 0) has the file's number plus k. A body never holds a
newline (it is JSON without indentation), so each record is two lines and
``split_batch`` finds every intact record however the others were damaged.

The body is a JSON object holding every field of ``Build`` as a string, the
payload in base64, so that it comes back byte for byte. A record is accepted
only if the header parses, ``v`` is 1, the body is exactly ``length`` bytes
and hashes to ``sha256``, the body holds a valid ``Build`` and that build's
name is the one in the file name: a truncated record, trailing garbage or
any flipped bit is detected, and raises ``CorruptRecord``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from typing import Any, Sequence

import attrs

from brigade_cr.core.values import Build

RECORD_VERSION = 1

# A build name as the spool accepts it: a DNS-1123 name short enough that
# the record's file name stays under the usual 255-byte limit. Build names
# are "brigade-worker-" and a ULID (41 characters).
_NAME = r"[a-z0-9](?:[-a-z0-9.]{0,198}[a-z0-9])?"
BUILD_NAME = re.compile(_NAME)
_RECORD_FILE = re.compile(rf"(\d{{20}})\.({_NAME})\.build")
TEMPORARY_FILE = re.compile(rf"\.(\d{{20}})\.({_NAME})\.build\.tmp")
_BATCH_FILE = re.compile(r"(\d{20})\.batch")
_TEMPORARY_BATCH = re.compile(r"\.(\d{20})\.batch\.tmp")
_REQUIRED = ("project_id", "ulid", "event_type", "event_provider", "commit_ref", "payload")
# The header is a few dozen bytes; looking further for its end is pointless.
_HEADER_LIMIT = 512
# How every header begins (its keys are sorted); a body never holds it, its
# quotes being escaped inside strings.
_HEADER_START = b'{"length":'


class CorruptRecord(Exception):
    """A spool record failed its checks; ``args[0]`` says which (never its content)."""


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
    try:
        build = _build_from_fields(fields)
    except CorruptRecord:
        raise
    except Exception:
        # Build validates its text (errors.InvalidText, ValueError,
        # TypeError): a record written before a rule existed, or edited by
        # hand, is damaged, never a surprise for the drainer.
        raise CorruptRecord("body is not a valid build") from None
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
    return Build(**{**fields, "payload": payload})


def temporary_filename(filename: str) -> str:
    """The name record (or batch) file ``filename`` has while it is written."""
    return f".{filename}.tmp"


def is_temporary_filename(filename: str) -> bool:
    """True for the name of a record or batch file being written (see ``temporary_filename``)."""
    return TEMPORARY_FILE.fullmatch(filename) is not None or _TEMPORARY_BATCH.fullmatch(filename) is not None


def batch_filename(sequence: int) -> str:
    """The name of the batch file whose first record has number ``sequence``."""
    return f"{sequence:020d}.batch"


def parse_batch_filename(filename: str) -> int | None:
    """The first record's sequence number of a batch file's name, or None for any other file."""
    match = _BATCH_FILE.fullmatch(filename)
    return None if match is None else int(match.group(1))


def encode_batch(records: Sequence[bytes]) -> tuple[bytes, list[tuple[int, int]]]:
    """
    ``records`` (each from ``encode_record``) as a batch file's content, and
    where each one is in it: ``(offset, length)``, in order.
    """
    places = []
    offset = 0
    for record in records:
        places.append((offset, len(record)))
        offset += len(record) + 1
    return b"\n".join(records) + b"\n", places


@attrs.frozen
class Slot:
    """
    An intact record in a batch file: the ``index``-th (its sequence number
    is the file's plus ``index``), at ``offset``, ``length`` bytes long.
    """

    index: int
    offset: int
    length: int
    build: Build


def split_batch(data: bytes) -> tuple[list[Slot], list[tuple[int, int]]]:
    """
    The intact records of the batch file content ``data``, and the damaged
    stretches between them as ``(offset, length)``: every byte that is not
    part of an intact record or the newline after it (a record that fails
    ``decode_record``, a torn end, stray bytes) is in exactly one stretch,
    so that it can be kept apart from the rest. A damaged record never hides
    an intact one: the search goes on at the next place a record can begin
    (a header's first bytes; no body holds them).

    A record's index is half the number of its line: its place in an intact
    file. Damage that adds or removes a newline may move the indices of the
    records after it, never their order: intact records' indices always
    increase along the file.
    """
    slots: list[Slot] = []
    damaged: list[tuple[int, int]] = []
    start = None  # where the current damaged stretch began
    position = line = 0
    size = len(data)
    while position < size:
        end = data.find(b"\n", position)
        slot = _record_at(data, position, size if end < 0 else end, line)
        if slot is not None:
            if start is not None:
                damaged.append((start, position - start))
                start = None
            slots.append(slot)
            following = slot.offset + slot.length + 1
        else:
            if start is None:
                start = position
            following = data.find(_HEADER_START, position + 1)
            if following < 0:
                following = size
        line += data.count(b"\n", position, following)
        position = following
    if start is not None:
        damaged.append((start, size - start))
    return slots, damaged


def _record_at(data: bytes, position: int, header_end: int, line: int) -> Slot | None:
    # The record whose header line runs from position to header_end, if it
    # is intact and ends with its newline; else None.
    if header_end >= len(data) or header_end - position > _HEADER_LIMIT:
        return None
    try:
        header = json.loads(data[position:header_end])
    except ValueError:
        return None
    length = header.get("length") if isinstance(header, dict) else None
    if type(length) is not int or length < 0:
        return None
    end = header_end + 1 + length
    if end >= len(data) or data[end] != 0x0A:
        return None
    try:
        build = decode_record(data[position:end])
    except CorruptRecord:
        return None
    return Slot(line // 2, position, end - position, build)
