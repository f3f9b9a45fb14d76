"""Group commit (``stores/spool/commit.py``) and the batched file steps of ``disk.py``."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import pytest
from twisted.internet.defer import Deferred

from brigade_cr.stores.fileio import InlineIO
from brigade_cr.stores.spool import disk
from brigade_cr.stores.spool.commit import GroupCommit
from brigade_cr.stores.spool.disk import no_step, remove_records, write_records
from brigade_cr.stores.spool.record import temporary_filename
from tests.helpers import failure_of, result_of


class HeldIO:
    """A BlockingIO holding every call until the test releases it."""

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append((function, args, d))
        return d

    def release(self, index: int = 0) -> None:
        function, args, d = self.pending.pop(index)
        try:
            d.callback(function(*args))
        except Exception:
            d.errback()


def test_a_lone_item_goes_at_once_and_later_ones_share_the_next_batch() -> None:
    seen: list[list[int]] = []

    def batch(items: Sequence[int]) -> list[BaseException | None]:
        seen.append(list(items))
        return [None if item != 4 else ValueError("four") for item in items]

    io = HeldIO()
    commit: GroupCommit[int] = GroupCommit(io, batch)
    first = commit.add(1)
    assert len(io.pending) == 1  # not delayed: nobody else to wait for
    later = [commit.add(n) for n in (2, 3, 4)]
    assert len(io.pending) == 1 and commit.busy()
    io.release()
    assert result_of(first) is None
    assert seen == [[1]]
    assert [d.called for d in later] == [False, False, False]
    io.release()
    assert seen == [[1], [2, 3, 4]]
    assert result_of(later[0]) is None and result_of(later[1]) is None
    assert isinstance(failure_of(later[2]), ValueError)  # only the item that failed
    assert not commit.busy()
    assert (commit.batches, commit.items) == (2, 4)


def test_items_added_together_share_one_batch_and_each_gets_its_own_result() -> None:
    seen: list[list[int]] = []

    def batch(items: Sequence[int]) -> list[BaseException | int]:
        seen.append(list(items))
        return [ValueError("two") if item == 2 else item * 10 for item in items]

    io = HeldIO()
    commit: GroupCommit[int] = GroupCommit(io, batch, max_batch=3)
    done = commit.add_all([1, 2, 3, 4])
    assert len(io.pending) == 1  # one batch at once, the fourth past max_batch waiting
    io.release()
    assert seen == [[1, 2, 3]]
    assert result_of(done[0]) == 10 and result_of(done[2]) == 30
    assert isinstance(failure_of(done[1]), ValueError)
    assert not done[3].called
    io.release()
    assert seen == [[1, 2, 3], [4]]
    assert result_of(done[3]) == 40
    assert commit.add_all([]) == [] and not io.pending and not commit.busy()


def test_a_batch_that_raises_fails_each_of_its_items_and_the_next_batch_still_runs() -> None:
    calls: list[list[str]] = []

    def batch(items: Sequence[str]) -> list[BaseException | None]:
        calls.append(list(items))
        if "bad" in items:
            raise OSError(errno.EIO, "I/O error")
        return [None] * len(items)

    io = HeldIO()
    commit: GroupCommit[str] = GroupCommit(io, batch)
    bad = commit.add("bad")
    a, b = commit.add("a"), commit.add("b")
    io.release()
    assert isinstance(failure_of(bad), OSError)
    io.release()
    assert result_of(a) is None and result_of(b) is None
    assert calls == [["bad"], ["a", "b"]]


def test_batches_are_capped_at_max_batch() -> None:
    sizes: list[int] = []

    def batch(items: Sequence[int]) -> list[BaseException | None]:
        sizes.append(len(items))
        return [None] * len(items)

    io = HeldIO()
    commit: GroupCommit[int] = GroupCommit(io, batch, max_batch=3)
    done = [commit.add(n) for n in range(8)]
    for _ in range(4):
        io.release()
    assert sizes == [1, 3, 3, 1]
    assert all(result_of(d) is None for d in done)


def test_up_to_concurrency_batches_run_at_once_and_a_freed_slot_takes_every_waiting_item() -> None:
    seen: list[list[int]] = []

    def batch(items: Sequence[int]) -> list[BaseException | None]:
        seen.append(list(items))
        return [None] * len(items)

    io = HeldIO()
    commit: GroupCommit[int] = GroupCommit(io, batch, concurrency=2)
    first, second = commit.add(1), commit.add(2)
    assert [args[0] for _, args, _ in io.pending] == [[1], [2]]  # neither waited for the other
    later = [commit.add(n) for n in (3, 4, 5)]
    assert len(io.pending) == 2  # both slots busy
    io.release(1)  # the second batch finishes first: its slot takes 3, 4 and 5
    assert result_of(second) is None and not first.called
    assert [args[0] for _, args, _ in io.pending] == [[1], [3, 4, 5]]
    io.release(0)
    assert result_of(first) is None
    assert not any(d.called for d in later) and commit.busy()
    io.release(0)
    assert all(result_of(d) is None for d in later)
    assert seen == [[2], [1], [3, 4, 5]]
    assert not commit.busy()
    assert (commit.batches, commit.items) == (3, 5)


def test_a_failed_batch_frees_its_slot() -> None:
    def batch(items: Sequence[str]) -> list[BaseException | None]:
        if "bad" in items:
            raise OSError(errno.EIO, "I/O error")
        return [None] * len(items)

    io = HeldIO()
    commit: GroupCommit[str] = GroupCommit(io, batch, concurrency=2)
    bad, good = commit.add("bad"), commit.add("good")
    waiting = commit.add("waiting")
    io.release(0)
    assert isinstance(failure_of(bad), OSError)
    assert [args[0] for _, args, _ in io.pending] == [["good"], ["waiting"]]
    io.release(0)
    io.release(0)
    assert result_of(good) is None and result_of(waiting) is None
    assert not commit.busy()


def test_concurrency_must_be_at_least_one() -> None:
    with pytest.raises(ValueError):
        GroupCommit(HeldIO(), lambda items: [None] * len(items), concurrency=0)


def test_synchronous_io_runs_every_batch_added_from_a_callback() -> None:
    """With InlineIO an item added from an item's callback runs too, without recursion."""
    seen: list[list[int]] = []

    def batch(items: Sequence[int]) -> list[BaseException | None]:
        seen.append(list(items))
        return [None] * len(items)

    commit: GroupCommit[int] = GroupCommit(InlineIO(), batch)
    follow: list[Deferred[None]] = []
    commit.add(1).addCallback(lambda _: follow.append(commit.add(2)))
    assert seen == [[1], [2]]
    assert result_of(follow[0]) is None
    assert not commit.busy()


def test_write_records_fsyncs_the_directory_once_for_the_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    directory_syncs: list[Path] = []
    monkeypatch.setattr(disk, "fsync_directory", directory_syncs.append)
    steps: list[str] = []
    outcomes = write_records(tmp_path, [("a.build", b"A"), ("b.build", b"BB")], steps.append)
    assert outcomes == [None, None]
    assert directory_syncs == [tmp_path]
    assert sorted(os.listdir(tmp_path)) == ["a.build", "b.build"]
    assert (tmp_path / "b.build").read_bytes() == b"BB"
    assert steps == [
        "write:start",
        "write:temp-written",
        "write:temp-fsynced",
        "write:renamed",
        "write:start",
        "write:temp-written",
        "write:temp-fsynced",
        "write:renamed",
        "write:dir-fsynced",
        "write:dir-fsynced",
    ]


def test_a_record_that_fails_alone_leaves_nothing_and_the_others_are_written(tmp_path: Path) -> None:
    writes = 0

    def full_on_second(step: str) -> None:
        nonlocal writes
        if step == "write:temp-written":
            writes += 1
            if writes == 2:
                raise OSError(errno.ENOSPC, "No space left on device")

    outcomes = write_records(tmp_path, [("a.build", b"A"), ("b.build", b"B"), ("c.build", b"C")], full_on_second)
    assert outcomes[0] is None and outcomes[2] is None
    assert isinstance(outcomes[1], OSError) and outcomes[1].errno == errno.ENOSPC
    assert sorted(os.listdir(tmp_path)) == ["a.build", "c.build"]
    assert not (tmp_path / temporary_filename("b.build")).exists()


def test_a_failed_directory_fsync_fails_and_removes_every_renamed_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(directory: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(disk, "fsync_directory", broken)
    outcomes = write_records(tmp_path, [("a.build", b"A"), ("b.build", b"B")], no_step)
    assert all(isinstance(outcome, OSError) and outcome.errno == errno.EIO for outcome in outcomes)
    assert os.listdir(tmp_path) == []


def test_remove_records_fsyncs_once_and_counts_a_missing_record_as_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory_syncs: list[Path] = []
    monkeypatch.setattr(disk, "fsync_directory", directory_syncs.append)
    (tmp_path / "a.build").write_bytes(b"A")
    (tmp_path / "c.build").write_bytes(b"C")
    steps: list[str] = []
    assert remove_records(tmp_path, ["a.build", "gone.build", "c.build"], steps.append) == [None, None, None]
    assert os.listdir(tmp_path) == []
    assert directory_syncs == [tmp_path]
    assert steps == ["drain:removed"] * 3 + ["drain:dir-fsynced"] * 3


def test_each_items_result_reaches_its_deferred() -> None:
    """A batch's per-item results (not only None) are what each item's Deferred fires with."""

    def batch(items: Sequence[int]) -> list[object]:
        return [item * 10 if item != 2 else KeyError(item) for item in items]

    io = HeldIO()
    commit: GroupCommit[int] = GroupCommit(io, batch)
    first = commit.add(1)
    later = [commit.add(n) for n in (2, 3)]
    io.release()
    io.release()
    assert result_of(first) == 10
    assert isinstance(failure_of(later[0]), KeyError)
    assert result_of(later[1]) == 30


def test_read_records_gives_each_build_or_what_reading_it_raised(tmp_path: Path) -> None:
    """
    Per record in order (in its own file or at its place in a batch file):
    its build, or the exception for it alone.
    """
    from brigade_cr.stores.spool.record import (
        CorruptRecord,
        batch_filename,
        encode_batch,
        encode_record,
        record_filename,
    )
    from tests.backend_contract import a_build

    good = a_build("one")
    good_path = tmp_path / record_filename(1, good.name)
    good_path.write_bytes(encode_record(good))
    corrupt_path = tmp_path / record_filename(2, good.name)
    corrupt_path.write_bytes(b"{not json")
    missing_path = tmp_path / record_filename(3, good.name)
    other = a_build("two")
    data, places = encode_batch([encode_record(good), encode_record(other)])
    batch_path = tmp_path / batch_filename(4)
    batch_path.write_bytes(data)
    second = disk.Placement(batch_path.name, *places[1])
    shifted = disk.Placement(batch_path.name, places[1][0] + 1, places[1][1])
    read = disk.read_records(
        [
            (good_path, good.name, None),
            (missing_path, good.name, None),
            (corrupt_path, good.name, None),
            (batch_path, other.name, second),
            (batch_path, other.name, shifted),
            (batch_path, good.name, second),
        ]
    )
    assert read[0] == good
    assert isinstance(read[1], FileNotFoundError)
    assert isinstance(read[2], CorruptRecord)
    assert read[3] == other  # the second record of the batch file, read at its place
    assert isinstance(read[4], CorruptRecord)  # a place one byte off holds no record
    assert isinstance(read[5], CorruptRecord)  # nor does a place holding another build
