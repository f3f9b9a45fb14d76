"""``bench/bench_parts.py``'s measured children do the work they are timed for (it asserts no speed)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import load_bench
from tests.slow import starts_process


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_bench(monkeypatch, "bench_parts")


@pytest.fixture
@starts_process
def standin(bench: ModuleType) -> Iterator[int]:
    burst = bench.bench_burst
    command = [sys.executable, str(burst.BENCH / "kube_standin.py"), "--token", burst.TOKEN]
    command += ["--namespace", burst.NAMESPACE, "--project", f"{burst.PROJECT}={burst.PROJECT_SECRET}"]
    process, port = burst.start_json_process(command)
    try:
        yield port
    finally:
        burst.stop(process)


def builds(bench: ModuleType, port: int) -> Any:
    return bench.bench_burst.stats(port)["builds"]


def positive(figures: dict[str, float]) -> bool:
    return figures["cpu_ms"] > 0 and figures["per_s"] > 0 and set(figures) == {"user_ms", "sys_ms", "cpu_ms", "per_s"}


@pytest.mark.parametrize("part", ["api-client", "minimal-client"])
def test_a_client_part_creates_every_secret_it_is_timed_for(
    bench: ModuleType, standin: int, tmp_path: Path, part: str
) -> None:
    """Warm-up and measured POSTs each create a build Secret at the stand-in: nothing is timed undone."""
    before = builds(bench, standin)
    figures = bench.measure_part(part, 7, standin, tmp_path)
    assert builds(bench, standin) - before == bench.WARM_UP + 7
    assert positive(figures)


def test_the_minimal_client_fails_on_an_answer_other_than_201(
    bench: ModuleType, standin: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused POST (here 401: a wrong token) stops the part, naming the answer, rather than being timed."""
    monkeypatch.setattr(bench.bench_burst, "TOKEN", "not-the-token")
    with pytest.raises(SystemExit, match=r"the part minimal-client failed:(.|\n)*401"):
        bench.measure_part("minimal-client", 3, standin, tmp_path)


@pytest.mark.parametrize("part", ["record-write-1", "record-write-8", "record-files-8"])
def test_a_write_part_writes_durably_and_leaves_the_directory_empty(
    bench: ModuleType, tmp_path: Path, part: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    Records are written and made durable (fsync called for each file, then
    the directory), then removed: a batch of 8 as the spool writes it is one
    file, as the spool wrote it before batch files, eight.
    """
    import os

    synced: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    figures = bench.child(part, 16, 0, "", tmp_path)
    assert positive(figures)
    assert list(tmp_path.iterdir()) == []
    writes = bench.WARM_UP + 16
    batch = int(part.rsplit("-", 1)[1])
    files = writes // batch if part == "record-write-8" else writes
    assert len(synced) == files + writes // batch  # each file, and the directory once per batch


@pytest.mark.slow
def test_the_thread_hop_runs_in_its_own_process(bench: ModuleType, tmp_path: Path) -> None:
    """The hop part (a reactor and its thread pool) runs as a child and reports its figures."""
    assert positive(bench.measure_part("thread-hop", 20, 0, tmp_path))


def test_an_unknown_part_is_refused_by_name(bench: ModuleType, tmp_path: Path) -> None:
    """A part that does not exist stops the child, naming it, rather than measuring nothing."""
    with pytest.raises(SystemExit, match="no part 'disk'"):
        bench.child("disk", 1, 0, "", tmp_path)


def test_the_file_system_of_a_directory(bench: ModuleType, tmp_path: Path) -> None:
    """The report names the file system the records were written on (the mount above the directory)."""
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    root = next(fields[2] for fields in mounts if fields[1] == "/")
    assert bench.file_system(Path("/")) == root
    assert bench.file_system(tmp_path) != "unknown"
