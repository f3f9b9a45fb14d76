"""``bench/bench_burst.py``'s watch on the gateway's log, which stops a run sized by time when the spool fills."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from tests.helpers import load_bench


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_bench(monkeypatch, "bench_burst")


def test_a_watch_sees_only_what_is_logged_after_it_began(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b"2026-12-02 [spool] " + bench.SPOOL_FULL + b" (10000 records): refusing deliveries\n")
    watch = bench.LogWatch(log, bench.SPOOL_FULL)
    assert not watch.seen()
    with log.open("ab") as out:
        out.write(b"2026-12-02 [webhook] Build created\n")
    assert not watch.seen()


def test_a_watch_finds_its_text_written_in_two_pieces(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b"")
    watch = bench.LogWatch(log, bench.SPOOL_FULL)
    half = len(bench.SPOOL_FULL) // 2
    with log.open("ab") as out:
        out.write(b"2026-12-02 [spool] " + bench.SPOOL_FULL[:half])
        out.flush()
        assert not watch.seen()
        out.write(bench.SPOOL_FULL[half:] + b" (10000 records): refusing deliveries\n")
    assert watch.seen()
    assert watch.seen()  # and stays seen


def test_the_watched_text_is_the_spools_own_line(bench: ModuleType) -> None:
    source = (Path(__file__).resolve().parent.parent / "brigade_cr/stores/spool/spooled.py").read_text()
    assert f'"{bench.SPOOL_FULL.decode()} (' in source


def test_a_watch_follows_the_log_file_when_twistd_rotates_it(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b"2026-12-02 [webhook] Build created\n" * 10)
    watch = bench.LogWatch(log, bench.SPOOL_FULL)
    with log.open("ab") as out:
        out.write(b"2026-12-02 [webhook] Build created\n")
    assert not watch.seen()
    # The old file, with a line written after the last look, becomes gateway.log.1.
    with log.open("ab") as out:
        out.write(b"2026-12-02 [spool] " + bench.SPOOL_FULL[:5])
    log.rename(tmp_path / "gateway.log.1")
    log.write_bytes(bench.SPOOL_FULL[5:] + b" (10000 records): refusing deliveries\n")
    assert watch.seen()


def test_a_watch_finds_the_line_in_a_new_file_after_a_rotation(bench: ModuleType, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(b"x" * 100)
    watch = bench.LogWatch(log, bench.SPOOL_FULL)
    log.rename(tmp_path / "gateway.log.1")
    log.write_bytes(b"short\n")  # shorter than the old offset
    assert not watch.seen()
    with log.open("ab") as out:
        out.write(bench.SPOOL_FULL + b"\n")
    assert watch.seen()
