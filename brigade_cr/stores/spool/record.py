"""
The spool's record format and file-name grammar: pure functions, no I/O.

A record is one file, ``NNNNNNNNNNNNNNNNNNNN.<build name>.build`` (a 20-digit
sequence number, so names sort in the order the builds were accepted; the
build name makes a re-delivery of a queued build cheap to recognise)::

    {"length":<body bytes>,"sha256":"<hex digest of the body>","v":1}\\n
    <body>

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
from typing import Any

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
_REQUIRED = ("project_id", "ulid", "event_type", "event_provider", "commit_ref", "payload")
# The header is a few dozen bytes; looking further for its end is pointless.
_HEADER_LIMIT = 512


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
    """The name record ``filename`` has while it is written."""
    return f".{filename}.tmp"


def is_temporary_filename(filename: str) -> bool:
    """True for the name of a record being written (see ``temporary_filename``)."""
    return TEMPORARY_FILE.fullmatch(filename) is not None
