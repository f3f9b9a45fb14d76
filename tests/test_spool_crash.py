"""
Crash consistency of the spool (promise P1, docs/guarantees.md): a writer process
(``tests/spool_writer.py``, real reactor and thread pool, the directory
backend as its store) is killed at every step of the write, drain and
dead-letter protocols, and with SIGKILL at arbitrary moments under load;
then the spool is recovered in this process with ``start()`` and drained.

Checked each time, on the files the dead process left:

- no record is ever damaged (nothing to quarantine), whatever the moment;
- every acknowledged build is either created already or has its record;
- after recovery and draining, every acknowledged build exists, exactly
  once, with its exact payload; the one whose ``submit`` had not returned
  exists (complete) or not at all; no temporary file remains.
"""

from __future__ import annotations

import json
import os
import random
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import attrs
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from brigade_cr.core.contract import secret_data
from brigade_cr.core.errors import BackendRejected
from brigade_cr.core.interfaces import IBuilds
from brigade_cr.core.values import Build, Receipt
from brigade_cr.stores.directory import write_build
from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import (
    DEAD_LETTER,
    DEAD_LETTER_STEPS,
    DRAIN_STEPS,
    QUARANTINE,
    WRITE_STEPS,
    CorruptRecord,
    SpooledBuilds,
    batch_filename,
    decode_record,
    encode_record,
    parse_batch_filename,
    parse_record_filename,
    record_filename,
)
from tests.helpers import result_of, spool_records
from tests.spool_writer import CRASH_EXIT, build_for

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT = 60.0  # seconds; a writer normally finishes in well under one
# local.write_build's temporary file: ".<build name>.<pid>.tmp"
STORE_TEMPORARY = re.compile(r"\.brigade-worker-[0-9a-z]+\.[0-9]+\.tmp")


@implementer(IBuilds)
@attrs.define
class DirectoryStore:
    """The directory backend, synchronously: what recovery drains into (the writer's store)."""

    root: Path
    refused: str | None = None
    poisoned: str | None = None

    def submit(self, build: Build) -> Deferred[Receipt]:
        if build.name == self.refused:
            return fail(BackendRejected("422 Unprocessable Entity"))
        if build.name == self.poisoned:
            "\udc80".encode()  # as the writer's store: UnicodeEncodeError, every time
        try:
            return succeed(write_build(self.root / "builds", build, "brigade"))
        except Exception:
            return fail()

    def created(self) -> dict[str, bytes]:
        """Build name -> stored payload, for every build in the store."""
        folder = self.root / "builds"
        if not folder.exists():
            return {}
        found = {}
        for path in sorted(folder.iterdir()):
            if STORE_TEMPORARY.fullmatch(path.name):
                # The directory backend's own half-written file, left by a
                # SIGKILL inside write_build (more likely now that four
                # builds are handed over at once): never a build, and the
                # backend ignores it.
                continue
            assert path.suffix == ".json", f"unexpected file in the store: {path.name}"
            secret = json.loads(path.read_text())
            found[secret["metadata"]["name"]] = secret_data(secret)["payload"]
        return found


@attrs.frozen
class Outcome:
    status: int
    acked: tuple[int, ...]
    queued: tuple[bool, ...]


def run_writer(spool: Path, store: Path, *arguments: str) -> Outcome:
    """Run the writer to its end (or its crash), within a bound; its acknowledgements."""
    process = subprocess.run(
        [sys.executable, "-m", "tests.spool_writer", str(spool), str(store), *arguments],
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    return outcome_of(process.returncode, process.stdout, process.stderr)


def outcome_of(status: int, stdout: bytes, stderr: bytes) -> Outcome:
    acked, queued = [], []
    for line in stdout.decode().splitlines():
        message = json.loads(line)
        if "ack" in message:
            acked.append(message["ack"])
            queued.append(message["queued"])
            assert message["name"] == build_for(message["ack"]).name
    assert status in (0, CRASH_EXIT, -signal.SIGKILL), stderr.decode()
    return Outcome(status, tuple(acked), tuple(queued))


def check_left_on_disk(spool: Path, store: DirectoryStore, acked: tuple[int, ...], parked: int | None = None) -> None:
    """
    What the dead process left: no damaged record; every acknowledged build
    created or recorded (build ``parked`` may instead be a valid record in
    dead-letter/).
    """
    recorded = set()
    if parked is not None and (spool / DEAD_LETTER).exists():
        for filename in os.listdir(spool / DEAD_LETTER):
            found = parse_dead_letter(filename)
            if found is not None and found == build_for(parked).name:
                decode_record((spool / DEAD_LETTER / filename).read_bytes(), found)
                recorded.add(found)
    # Record files and batch files alike; any damage fails the test.
    try:
        recorded.update(name for _, name, _ in spool_records(spool))
    except CorruptRecord as e:
        raise AssertionError(f"a record is damaged: {e}") from None
    created = store.created()
    for index in acked:
        name = build_for(index).name
        assert name in created or name in recorded, f"acknowledged build {index} is neither created nor recorded"


def recover_and_drain(spool: Path, store: DirectoryStore) -> SpooledBuilds:
    clock = Clock()
    recovered = SpooledBuilds(spool, store, clock, InlineIO())
    result_of(recovered.start())
    for _ in range(100):
        if recovered.stats().queued == 0:
            break
        clock.advance(60)
    assert recovered.stats().queued == 0
    stopping = recovered.stop(0)
    clock.advance(0)
    result_of(stopping)
    return recovered


def check_recovered(
    spool: Path, store: DirectoryStore, acked: tuple[int, ...], count: int, refused: int | None = None
) -> dict[str, bytes]:
    """After recovery: each acknowledged build once with its exact payload; nothing damaged, nothing half-written."""
    recovered = recover_and_drain(spool, store)
    assert recovered.stats().quarantined == 0
    assert not (spool / QUARANTINE).exists()
    created = store.created()
    expected = {build_for(index).name for index in acked if index != refused}
    assert expected <= set(created)
    # Beyond the acknowledged ones, only builds the writer had begun.
    assert set(created) <= {build_for(index).name for index in range(count)}
    for index in range(count):
        name = build_for(index).name
        if name in created:
            assert created[name] == build_for(index).payload
    leftovers = [
        name
        for name in os.listdir(spool)
        if name.endswith(".tmp") or parse_record_filename(name) or parse_batch_filename(name) is not None
    ]
    assert leftovers == []
    return created


COUNT = 5
CRASH_OCCURRENCE = 3  # the third build: two were acknowledged before it


def parse_dead_letter(filename: str) -> str | None:
    """The build name of a record file in dead-letter/ (parked twice: ``<record>.1``), else None."""
    base, _, number = filename.rpartition(".")
    parsed = parse_record_filename(filename) or (parse_record_filename(base) if number.isdigit() else None)
    return None if parsed is None else parsed[1]


# Builds 0, 1, 2 submitted at once through one write slot: build 0 is
# written alone (a record file), builds 1 and 2 together (a batch file).
BATCHED = ("--count", "3", "--concurrency", "3", "--write-slots", "1")


@pytest.mark.parametrize("step", WRITE_STEPS + DRAIN_STEPS)
def test_crash_with_api_up(tmp_path: Path, step: str) -> None:
    """
    API up: killed at a step while handling the third build. The first two
    were acknowledged as created (the third too when the crash came while
    removing its record, which happens after the answer); the third exists
    complete or not at all, and never twice (a crash after the create and
    before the record's removal resubmits it, which the store answers as a
    duplicate).
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = run_writer(spool, root, "--count", str(COUNT), "--crash", step, "--at", str(CRASH_OCCURRENCE), "--settle")
    assert outcome.status == CRASH_EXIT
    answered_before_crash = step in ("drain:removed", "drain:dir-fsynced")
    assert outcome.acked == ((0, 1, 2) if answered_before_crash else (0, 1))
    assert set(outcome.queued) == {False}
    check_left_on_disk(spool, store, outcome.acked)
    third = build_for(2).name
    # The crash came exactly where it should: the third build's files show it.
    temporary = f".{record_filename(3, third)}.tmp"
    left = set(os.listdir(spool))
    assert (temporary in left) == (step in ("write:temp-written", "write:temp-fsynced"))
    assert (record_filename(3, third) in left) == (step in ("write:renamed", "write:dir-fsynced", "drain:submitted"))
    assert (third in store.created()) == (step in DRAIN_STEPS)
    created = check_recovered(spool, store, outcome.acked, COUNT)
    if step in ("write:renamed", "write:dir-fsynced") or step in DRAIN_STEPS:
        # The record was complete (or the build created) before the crash.
        assert third in created
    else:
        assert third not in created
    # Nothing beyond the build being handled was begun: the writer settles
    # (its record removed) before it submits the next.
    assert set(created) <= {build_for(index).name for index in range(3)}


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_crash_with_api_down(tmp_path: Path, step: str) -> None:
    """
    API down: every acknowledgement says queued, so every acknowledged
    record must be on disk when the writer dies; recovery with the API up
    creates each of them once.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = run_writer(
        spool, root, "--count", str(COUNT), "--inner", "down", "--crash", step, "--at", str(CRASH_OCCURRENCE)
    )
    assert outcome.status == CRASH_EXIT
    assert outcome.acked == (0, 1)
    assert outcome.queued == (True, True)
    assert store.created() == {}
    check_left_on_disk(spool, store, outcome.acked)
    check_recovered(spool, store, outcome.acked, COUNT)


@pytest.mark.parametrize("step", DEAD_LETTER_STEPS)
def test_crash_while_dead_lettering(tmp_path: Path, step: str) -> None:
    """
    Killed while parking a refused build: the record is never lost (it is in
    the spool, to be refused again, or in dead-letter/) and never created.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root, refused=build_for(2).name)
    outcome = run_writer(spool, root, "--count", str(COUNT), "--inner", "reject:2", "--crash", step)
    assert outcome.status == CRASH_EXIT
    assert outcome.acked == (0, 1)
    check_left_on_disk(spool, store, outcome.acked)
    created = check_recovered(spool, store, outcome.acked, COUNT, refused=2)
    assert build_for(2).name not in created
    parked = [name for name in os.listdir(spool / DEAD_LETTER) if parse_record_filename(name)]
    assert parked == [record_filename(3, build_for(2).name)]
    assert decode_record((spool / DEAD_LETTER / parked[0]).read_bytes()) == build_for(2)


@pytest.mark.parametrize("step", DEAD_LETTER_STEPS)
def test_crash_while_dead_lettering_a_poisoned_record(tmp_path: Path, step: str) -> None:
    """
    A build whose submission raises UnicodeEncodeError every time: the
    builds after it are created while it is retried, and a kill while it is
    parked after its fifth failure loses nothing: it is in the spool (to
    fail again and be parked after recovery) or in dead-letter/ with its
    reason; never created, never damaged.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root, poisoned=build_for(2).name)
    outcome = run_writer(spool, root, "--count", str(COUNT), "--inner", "poison:2", "--drain", "--crash", step)
    assert outcome.status == CRASH_EXIT
    assert outcome.acked == (0, 1, 2, 3, 4)
    assert outcome.queued == (False, False, True, False, False)
    assert set(store.created()) == {build_for(index).name for index in (0, 1, 3, 4)}
    check_left_on_disk(spool, store, outcome.acked, parked=2)
    created = check_recovered(spool, store, outcome.acked, COUNT, refused=2)
    assert build_for(2).name not in created
    parked = [name for name in os.listdir(spool / DEAD_LETTER) if parse_record_filename(name)]
    assert parked == [record_filename(3, build_for(2).name)]
    assert decode_record((spool / DEAD_LETTER / parked[0]).read_bytes()) == build_for(2)
    reason = json.loads((spool / DEAD_LETTER / (parked[0] + ".reason.json")).read_text())
    assert (reason["error"], reason["attempts"], reason["record"]) == ("UnicodeEncodeError", 5, parked[0])
    assert reason["reason"] == "submitting it failed unexpectedly 5 times"


@pytest.mark.parametrize("step", ["quarantine:reason-written", "quarantine:moved"])
def test_crash_while_quarantining(tmp_path: Path, step: str) -> None:
    """Killed while quarantining a damaged record at start: recovery finishes the job; the good record is created."""
    spool, root = tmp_path / "spool", tmp_path / "store"
    spool.mkdir()
    damaged = spool / record_filename(1, build_for(0).name)
    damaged.write_bytes(encode_record(build_for(0))[:-1])
    (spool / record_filename(2, build_for(1).name)).write_bytes(encode_record(build_for(1)))
    store = DirectoryStore(root)
    outcome = run_writer(spool, root, "--count", "0", "--crash", step)
    assert outcome.status == CRASH_EXIT
    recover_and_drain(spool, store)
    assert store.created() == {build_for(1).name: build_for(1).payload}
    quarantined = [name for name in os.listdir(spool / QUARANTINE) if parse_record_filename(name)]
    assert quarantined == [damaged.name]
    assert not damaged.exists()


def test_every_step_is_reached(tmp_path: Path) -> None:
    """The writer runs to its end without a crash point: all builds acknowledged and created, the spool empty."""
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = run_writer(spool, root, "--count", str(COUNT))
    assert outcome.status == 0
    assert outcome.acked == tuple(range(COUNT))
    assert set(store.created()) == {build_for(index).name for index in range(COUNT)}
    assert [name for name in os.listdir(spool) if parse_record_filename(name)] == []


def kill_after_acks(spool: Path, root: Path, acks: int, *arguments: str) -> Outcome:
    """Start a writer under load and SIGKILL it once it has acknowledged ``acks`` builds (bounded wait)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.spool_writer", str(spool), str(root), "--count", "100000", *arguments],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    output = b""
    seen = 0
    deadline = time.monotonic() + PROCESS_TIMEOUT
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(process.stdout, selectors.EVENT_READ)
            while seen < acks:
                remaining = deadline - time.monotonic()
                assert remaining > 0, "the writer did not acknowledge enough builds in time"
                if not selector.select(remaining):
                    continue
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, "the writer exited before it was killed"
                output += chunk
                seen = output.count(b"\n")
        process.send_signal(signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        rest, errors = process.communicate(timeout=PROCESS_TIMEOUT)
    return outcome_of(process.returncode, output + rest, errors)


@pytest.mark.parametrize(("inner", "seed"), [("up", 1), ("up", 2), ("down", 3)])
def test_sigkill_under_load(tmp_path: Path, inner: str, seed: int) -> None:
    """
    kill -9 at an arbitrary moment, four submits in flight: every
    acknowledged build survives and is created once; builds begun but not
    acknowledged are complete or absent.
    """
    acks = random.Random(seed).randint(5, 40)
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = kill_after_acks(spool, root, acks, "--concurrency", "4", "--inner", inner)
    assert outcome.status == -signal.SIGKILL
    assert len(outcome.acked) >= acks
    check_left_on_disk(spool, store, outcome.acked)
    # Submits start in index order, at most four at a time: nothing beyond
    # the last acknowledged build and the four after it was begun.
    created = check_recovered(spool, store, outcome.acked, max(outcome.acked) + 5)
    assert len(created) >= len(outcome.acked)


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_crash_while_writing_a_batch_file(tmp_path: Path, step: str) -> None:
    """
    API down, killed at a step of writing the batch file of builds 1 and 2
    (the second file written): build 0 was acknowledged (queued) and is on
    disk; builds 1 and 2 are both in the batch file or neither is, and
    never damaged; recovery creates build 0, and 1 and 2 exactly when their
    file had been renamed into place.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = run_writer(spool, root, *BATCHED, "--inner", "down", "--crash", step, "--at", "2")
    assert outcome.status == CRASH_EXIT
    assert outcome.acked == (0,)
    assert outcome.queued == (True,)
    check_left_on_disk(spool, store, outcome.acked)
    left = set(os.listdir(spool))
    assert record_filename(1, build_for(0).name) in left
    renamed = step in ("write:renamed", "write:dir-fsynced")
    assert (batch_filename(2) in left) == renamed
    assert (f".{batch_filename(2)}.tmp" in left) == (step in ("write:temp-written", "write:temp-fsynced"))
    created = check_recovered(spool, store, outcome.acked, 3)
    assert set(created) == {build_for(index).name for index in ((0, 1, 2) if renamed else (0,))}


@pytest.mark.parametrize(("step", "at"), [("drain:submitted", 2), ("drain:submitted", 3), ("drain:removed", 2)])
def test_crash_while_draining_a_batch_file(tmp_path: Path, step: str, at: int) -> None:
    """
    API up, killed after the second or the third build was created (builds
    0, 1 and 2 are handed over side by side, in whatever order their
    creations finish), or at the second removal: the batch file of builds 1
    and 2 is removed only when both are created, so recovery hands over
    again what it still holds, which the store answers as duplicates: every
    build exactly once, with its payload.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root)
    outcome = run_writer(spool, root, *BATCHED, "--crash", step, "--at", str(at))
    assert outcome.status == CRASH_EXIT
    check_left_on_disk(spool, store, outcome.acked)
    # A batch file is removed whole, never emptied record by record: it holds
    # both builds (whichever of them, and of build 0, was created first), or
    # it is gone because both were created.
    in_batch = [name for sequence, name, _ in spool_records(spool) if sequence >= 2]
    assert in_batch in ([], [build_for(1).name, build_for(2).name])
    if not in_batch:
        assert {build_for(1).name, build_for(2).name} <= set(store.created())
    created = check_recovered(spool, store, outcome.acked, 3)
    assert set(created) == {build_for(index).name for index in range(3)}


@pytest.mark.parametrize("step", DEAD_LETTER_STEPS)
def test_crash_while_dead_lettering_from_a_batch_file(tmp_path: Path, step: str) -> None:
    """
    Build 1, in the batch file with build 2, is refused for good: it is
    parked as a record file of its own, copied out of the batch file, which
    stays until build 2 is created too. Killed while parking it: recovery
    refuses it again and parks it (a second copy if the first was complete);
    it is never created, never lost, and build 2 is created once.
    """
    spool, root = tmp_path / "spool", tmp_path / "store"
    store = DirectoryStore(root, refused=build_for(1).name)
    outcome = run_writer(spool, root, *BATCHED, "--inner", "reject:1", "--crash", step)
    assert outcome.status == CRASH_EXIT
    check_left_on_disk(spool, store, outcome.acked, parked=1)
    created = check_recovered(spool, store, outcome.acked, 3, refused=1)
    assert build_for(1).name not in created
    assert build_for(2).name in created
    parked = sorted(name for name in os.listdir(spool / DEAD_LETTER) if parse_dead_letter(name))
    first = record_filename(2, build_for(1).name)
    assert parked == ([first, first + ".1"] if step == "dead-letter:moved" else [first])
    for name in parked:
        assert decode_record((spool / DEAD_LETTER / name).read_bytes()) == build_for(1)
        reason = json.loads((spool / DEAD_LETTER / (name + ".reason.json")).read_text())
        assert (reason["record"], reason["reason"]) == (name, "422 Unprocessable Entity")
