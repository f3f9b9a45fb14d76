"""
Batch files (``stores/spool/record.py``, ``disk.py``): records written
together kept in one file, found again whole however the rest of the file
was damaged, written durably once for all of them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from brigade_cr.core.values import Build
from brigade_cr.stores.spool import (
    WRITE_STEPS,
    Placement,
    batch_filename,
    decode_record,
    encode_batch,
    encode_record,
    parse_batch_filename,
    record_filename,
    recover,
    split_batch,
    write_records,
)
from brigade_cr.stores.spool.disk import no_step, read_records
from tests.backend_contract import a_build


def build(number: int) -> Build:
    return a_build(ulid=f"01jgq8w4h2{number:016d}", payload=b'{"n": %d}\n\xff' % number)


def records_of(numbers: range | list[int]) -> list[bytes]:
    return [encode_record(build(n)) for n in numbers]


def named(numbers: range | list[int]) -> list[tuple[str, bytes]]:
    return [(record_filename(n, build(n).name), record) for n, record in zip(numbers, records_of(numbers), strict=True)]


# -- the format ----------------------------------------------------------------------------------


def test_a_batch_file_name_carries_its_first_sequence_number() -> None:
    assert batch_filename(7) == "00000000000000000007.batch"
    assert parse_batch_filename(batch_filename(7)) == 7
    assert parse_batch_filename(record_filename(7, "brigade-worker-x")) is None
    assert parse_batch_filename(".00000000000000000007.batch.tmp") is None
    assert parse_batch_filename("7.batch") is None


def test_each_record_is_found_at_its_place_in_order() -> None:
    records = records_of(range(4))
    data, places = encode_batch(records)
    assert data.count(b"\n") == 8  # two lines per record: a body holds no newline
    slots, damaged = split_batch(data)
    assert damaged == []
    assert [(slot.index, slot.offset, slot.length) for slot in slots] == [
        (index, offset, length) for index, (offset, length) in enumerate(places)
    ]
    assert [slot.build for slot in slots] == [build(n) for n in range(4)]
    for (offset, length), record in zip(places, records, strict=True):
        assert data[offset : offset + length] == record


def test_a_damaged_record_is_one_stretch_and_hides_no_other() -> None:
    records = records_of(range(3))
    data, places = encode_batch(records)
    flipped = bytearray(data)
    offset, length = places[1]
    flipped[offset + length - 3] ^= 0x01  # in the second record's body
    slots, damaged = split_batch(bytes(flipped))
    assert [(slot.index, slot.build) for slot in slots] == [(0, build(0)), (2, build(2))]
    # Its two lines and the newline after them: every byte that is not an intact record's.
    assert damaged == [(offset, length + 1)]


def test_a_torn_end_loses_only_the_last_record() -> None:
    data, places = encode_batch(records_of(range(3)))
    slots, damaged = split_batch(data[:-7])
    assert [slot.index for slot in slots] == [0, 1]
    assert damaged == [(places[2][0], len(data) - 7 - places[2][0])]


def test_a_newline_added_or_lost_keeps_the_others_in_their_places() -> None:
    """A record's index comes from its line: a stray newline before it does not renumber the ones after it."""
    data, places = encode_batch(records_of(range(4)))
    offset = places[1][0]
    added = data[: offset + 10] + b"\n" + data[offset + 10 :]
    slots, _ = split_batch(added)
    assert [(slot.index, slot.build) for slot in slots] == [(0, build(0)), (2, build(2)), (3, build(3))]
    header_end = data.index(b"\n", offset)
    lost = data[:header_end] + data[header_end + 1 :]  # the second record's two lines become one
    slots, _ = split_batch(lost)
    assert [slot.build for slot in slots] == [build(0), build(2), build(3)]
    indices = [slot.index for slot in slots]
    assert indices == sorted(set(indices))  # still one number each, in order


@given(
    count=st.integers(min_value=1, max_value=5),
    position=st.integers(min_value=0),
    value=st.integers(min_value=0, max_value=255),
    cut=st.booleans(),
)
def test_any_one_byte_changed_or_cut_damages_only_the_record_it_is_in(
    count: int, position: int, value: int, cut: bool
) -> None:
    """
    Whatever byte changes (or wherever the file ends): every record it does
    not touch (itself and the newline after it) is found intact at its
    place, the indices still increase along the file, and intact records
    and damaged stretches cover the file exactly once.
    """
    data, places = encode_batch(records_of(range(count)))
    position %= len(data)
    changed = data[:position] if cut else data[:position] + bytes([value]) + data[position + 1 :]
    slots, damaged = split_batch(changed)
    touched = {index for index, (offset, length) in enumerate(places) if offset <= position <= offset + length}
    untouched = [
        index for index in range(count) if index not in touched and places[index][0] + places[index][1] < len(changed)
    ]
    found = {slot.offset: slot for slot in slots}
    for index in untouched:
        assert found[places[index][0]].build == build(index)
    indices = [slot.index for slot in slots]
    assert indices == sorted(set(indices))
    if changed == data:
        assert indices == list(range(count))
    pieces = sorted([(slot.offset, slot.length + 1) for slot in slots] + damaged)
    covered = 0
    for offset, length in pieces:
        assert offset == covered
        covered += length
    assert covered == len(changed)


# -- writing ---------------------------------------------------------------------------------------


def test_records_in_sequence_go_to_one_batch_file(tmp_path: Path) -> None:
    """One file, fsynced and renamed once; each record's place returned; the steps once per file."""
    steps: list[str] = []
    outcomes = write_records(tmp_path, named(range(3, 6)), steps.append)
    assert os.listdir(tmp_path) == [batch_filename(3)]
    data = (tmp_path / batch_filename(3)).read_bytes()
    assert all(isinstance(outcome, Placement) for outcome in outcomes)
    for number, outcome in zip(range(3, 6), outcomes, strict=True):
        assert isinstance(outcome, Placement)
        assert outcome.filename == batch_filename(3)
        assert decode_record(data[outcome.offset : outcome.offset + outcome.length]) == build(number)
    assert steps == list(WRITE_STEPS[:-1]) + ["write:dir-fsynced"] * 3
    second = outcomes[1]
    assert isinstance(second, Placement)
    read = read_records([(tmp_path / batch_filename(3), build(4).name, second)])
    assert read == [build(4)]


def test_a_lone_record_or_a_gap_in_the_sequence_gets_record_files(tmp_path: Path) -> None:
    assert write_records(tmp_path, named([1]), no_step) == [None]
    assert write_records(tmp_path, named([2, 4]), no_step) == [None, None]
    assert sorted(os.listdir(tmp_path)) == [record_filename(n, build(n).name) for n in (1, 2, 4)]


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_failed_step_fails_every_record_of_the_batch_and_leaves_nothing(tmp_path: Path, step: str) -> None:
    """Records in one file succeed or fail together: no sender may be answered for a file that may not survive."""

    def fail_at(reached: str) -> None:
        if reached == step:
            raise OSError(5, "Input/output error")

    outcomes = write_records(tmp_path, named(range(1, 4)), fail_at)
    assert [type(outcome) for outcome in outcomes] == [OSError] * 3
    assert os.listdir(tmp_path) == []


# -- recovering ------------------------------------------------------------------------------------


def test_recovery_finds_each_record_of_a_batch_file_and_quarantines_a_damaged_one(tmp_path: Path) -> None:
    """
    The damaged stretch is copied to quarantine/ and the file rewritten with
    the intact records alone, their numbers closed up in order: a second
    start finds the same records and no damage to copy again.
    """
    write_records(tmp_path, named(range(1, 4)), no_step)
    path = tmp_path / batch_filename(1)
    data, places = encode_batch(records_of(range(1, 4)))
    damaged = bytearray(data)
    damaged[places[1][0] + places[1][1] - 2] ^= 0x20
    path.write_bytes(bytes(damaged))
    recovery = recover(tmp_path, "now")
    os.close(recovery.lock_fd)
    assert [(found.sequence, found.name) for found in recovery.records] == [(1, build(1).name), (2, build(3).name)]
    rewritten, kept = encode_batch(records_of([1, 3]))
    assert path.read_bytes() == rewritten
    assert [found.placement for found in recovery.records] == [Placement(batch_filename(1), *place) for place in kept]
    # The file the record would have of its own: the name it gets if parked.
    assert recovery.records[1].filename == record_filename(2, build(3).name)
    stretch = f"{batch_filename(1)}.{places[1][0]}.damaged"
    assert recovery.quarantined == ((stretch, "a damaged stretch of a batch file"),)
    assert (tmp_path / "quarantine" / stretch).read_bytes() == bytes(damaged)[places[1][0] : places[2][0]]
    assert recovery.next_sequence > 3
    again = recover(tmp_path, "later")
    os.close(again.lock_fd)
    assert again.quarantined == ()
    assert again.records == recovery.records
    assert sorted(os.listdir(tmp_path / "quarantine")) == [stretch, stretch + ".reason.json"]


def test_recovery_removes_a_batch_file_with_no_intact_record_and_a_half_written_one(tmp_path: Path) -> None:
    (tmp_path / batch_filename(5)).write_bytes(b"not a record\n")
    (tmp_path / f".{batch_filename(9)}.tmp").write_bytes(b"half")
    recovery = recover(tmp_path, "now")
    os.close(recovery.lock_fd)
    assert recovery.records == ()
    assert recovery.discarded == (f".{batch_filename(9)}.tmp",)
    assert sorted(os.listdir(tmp_path)) == ["quarantine", "spool.lock"]
    assert (tmp_path / "quarantine" / f"{batch_filename(5)}.0.damaged").read_bytes() == b"not a record\n"
    # Its number is still never given again.
    assert recovery.next_sequence > 5


def test_recovery_gives_every_record_a_sequence_number_of_its_own(tmp_path: Path) -> None:
    """
    A record file claiming a number a batch file's record has (moved back
    from dead-letter/, say) gets a new one, after all the others.
    """
    write_records(tmp_path, named(range(1, 4)), no_step)
    moved_back = record_filename(2, build(9).name)
    (tmp_path / moved_back).write_bytes(encode_record(build(9)))
    recovery = recover(tmp_path, "now")
    os.close(recovery.lock_fd)
    sequences = [found.sequence for found in recovery.records]
    assert len(set(sequences)) == 4
    assert sequences == sorted(sequences)
    assert [found.name for found in recovery.records] == [build(n).name for n in (1, 2, 3, 9)]
    assert recovery.records[-1].filename == moved_back
    assert recovery.records[-1].placement is None
    assert recovery.next_sequence > max(sequences)


def test_a_large_write_batch_is_cut_into_batch_files_of_bounded_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs of records up to the budget share a file; a run of one is a record file; every record is where it says."""
    from brigade_cr.stores.spool import disk

    records = named(range(1, 6))
    size = len(records[0][1])
    monkeypatch.setattr(disk, "BATCH_FILE_BYTES", 2 * size + size // 2)  # two records fit, three do not
    outcomes = write_records(tmp_path, records, no_step)
    assert sorted(os.listdir(tmp_path)) == [batch_filename(1), batch_filename(3), record_filename(5, build(5).name)]
    assert [outcome.filename if isinstance(outcome, Placement) else outcome for outcome in outcomes] == [
        batch_filename(1),
        batch_filename(1),
        batch_filename(3),
        batch_filename(3),
        None,
    ]
    for number, outcome in zip(range(1, 5), outcomes, strict=False):
        assert isinstance(outcome, Placement)
        data = (tmp_path / outcome.filename).read_bytes()
        assert decode_record(data[outcome.offset : outcome.offset + outcome.length]) == build(number)
