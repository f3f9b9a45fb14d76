"""
A spool written before values refused unencodable text may hold a record
with a lone surrogate: it is quarantined at start, and the records behind it
are built.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

from twisted.internet.task import Clock

from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import SpooledBuilds, decode_record, encode_record
from brigade_cr.testing.memory import MemoryBuilds
from tests.backend_contract import a_build
from tests.helpers import result_of

POISONED = "01jgq8w4h0bbbbbbbbbbbbbbbb"


def legacy_record(commit_ref: str) -> bytes:
    """A record as the old spool wrote one for a build whose commit ref held ``commit_ref``."""
    fields = {
        "project_id": "brigade-x",
        "ulid": POISONED,
        "event_type": "image_push",
        "event_provider": "dockerhub",
        "commit_ref": commit_ref,
        "payload": base64.b64encode(b"{}").decode(),
    }
    body = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")
    header = {"v": 1, "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n" + body


def test_poisoned_legacy_record_is_quarantined(tmp_path: Path) -> None:
    """The record with "\\udcff" in it is quarantined with its reason; the good record behind it is built."""
    spool = tmp_path / "spool"
    spool.mkdir()
    poisoned = f"{1:020d}.brigade-worker-{POISONED}.build"
    (spool / poisoned).write_bytes(legacy_record("\udcff"))
    good = a_build()
    (spool / f"{2:020d}.{good.name}.build").write_bytes(encode_record(good))
    store = MemoryBuilds()
    builds = SpooledBuilds(spool, store, Clock(), InlineIO())
    result_of(builds.start())
    try:
        assert list(store.secrets) == [good.name]
        assert builds.stats().quarantined == 1
        reason = json.loads((spool / "quarantine" / (poisoned + ".reason.json")).read_text())
        assert reason["reason"] == "body is not a valid build"
        assert (spool / "quarantine" / poisoned).exists()
    finally:
        result_of(builds.stop(0))


def test_the_same_record_with_valid_text_is_built(tmp_path: Path) -> None:
    """The legacy record is otherwise a good one: with encodable text it decodes to its build."""
    assert decode_record(legacy_record("v\u00e9")).commit_ref == "v\u00e9"
