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


@pytest.fixture
def floor_module(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_bench(monkeypatch, "floor_server")


@pytest.fixture
@starts_process
def floor(bench: ModuleType, standin: int, request: pytest.FixtureRequest) -> Iterator[int]:
    """A floor server (``request.param``: its client and its token) in front of the stand-in; its port."""
    client, token = request.param
    burst = bench.bench_burst
    command = [sys.executable, str(burst.BENCH / "floor_server.py"), "--api-port", str(standin)]
    command += ["--token", token or burst.TOKEN, "--namespace", burst.NAMESPACE, "--client", client]
    process, port = burst.start_json_process(command)
    try:
        yield port
    finally:
        burst.stop(process)


def post(port: int, body: bytes) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        for _ in range(3):  # keep-alive: the answers come on one connection
            connection.request("POST", "/events/webhook/bench/app", body=body)
            answer = connection.getresponse()
            status, text = answer.status, answer.read()
        return status, text
    finally:
        connection.close()


@pytest.mark.parametrize("floor", [("treq", None), ("minimal", None)], indirect=True, ids=["treq", "minimal"])
def test_the_floor_server_creates_a_secret_before_each_answer(bench: ModuleType, standin: int, floor: int) -> None:
    """Each POST is answered 200 only after the stand-in created a build Secret for it, a distinct one each."""
    before = builds(bench, standin)
    status, text = post(floor, b'{"push_data": {}}')
    assert (status, text) == (200, b'{"status": "Success", "bytes": 17}\n')
    assert builds(bench, standin) - before == 3


@pytest.mark.parametrize("floor", [("treq", "wrong"), ("minimal", "wrong")], indirect=True, ids=["treq", "minimal"])
def test_the_floor_server_answers_502_when_the_api_refuses(bench: ModuleType, standin: int, floor: int) -> None:
    """A creation the stand-in refuses (a wrong token: 401) is answered 502 naming it, never 200."""
    before = builds(bench, standin)
    status, text = post(floor, b"{}")
    assert status == 502
    assert b"401" in text
    assert builds(bench, standin) == before


def test_the_minimal_post_decodes_a_201_and_fails_on_anything_else(floor_module: ModuleType) -> None:
    """``MinimalPost`` fires with the JSON of a 201 answer arriving in pieces, and fails naming another status."""
    from twisted.internet.testing import StringTransport

    protocol = floor_module.MinimalPost(floor_module.minimal_head(1, "t", "ns"))
    protocol.makeConnection(StringTransport())
    results: list[Any] = []
    protocol.post(b"{}").addCallback(results.append)
    sent = protocol.transport.value()
    assert sent.startswith(b"POST /api/v1/namespaces/ns/secrets?fieldManager=brigade-cr HTTP/1.1\r\n")
    assert sent.endswith(b"Content-Length: 2\r\n\r\n{}")
    protocol.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 8\r\n\r\n")
    assert results == []
    protocol.dataReceived(b'{"a": 1}')
    assert results == [{"a": 1}]
    failures: list[Any] = []
    protocol.post(b"{}").addErrback(failures.append)
    protocol.dataReceived(b"HTTP/1.1 409 Conflict\r\nContent-Length: 2\r\n\r\n{}")
    assert "409 Conflict" in failures[0].getErrorMessage()


def test_a_floor_run_with_refusals_is_not_measured(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """A floor run whose answers were not all 2xx, or whose builds fall short of them, stops the benchmark."""
    runs = iter([{"requests": 1, "acks": 1, "status_errors": 0}, {"requests": 9, "acks": 5, "status_errors": 4}])
    monkeypatch.setattr(bench.bench_burst, "start_json_process", lambda command: (FakeProcess(), 1))
    monkeypatch.setattr(bench.bench_burst, "run_wrk", lambda *args: {**next(runs), "seconds": 1.0})
    monkeypatch.setattr(bench.bench_burst, "stats", lambda port: {"builds": 5})
    monkeypatch.setattr(bench.bench_burst, "stop", lambda process: None)
    monkeypatch.setattr(bench.bench_burst, "cpu_times", lambda pid: (1.0, 0.5))
    with pytest.raises(SystemExit, match=r"floor server \(treq\) answered 9 requests, 4 not 2xx"):
        bench.floor_server(1, 2, "treq")


def test_a_floor_run_is_measured_per_request_answered(bench: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The floor's CPU is the server's user and system time over the measured run, per request answered."""
    runs = iter([{"requests": 1, "acks": 1, "status_errors": 0}, {"requests": 500, "acks": 500, "status_errors": 0}])
    cpu = iter([(10.0, 2.0), (10.4, 2.1)])
    created = iter([{"builds": 100}, {"builds": 601}])
    monkeypatch.setattr(bench.bench_burst, "start_json_process", lambda command: (FakeProcess(), 1))
    monkeypatch.setattr(bench.bench_burst, "run_wrk", lambda *args: {**next(runs), "seconds": 2.0})
    monkeypatch.setattr(bench.bench_burst, "stats", lambda port: next(created))
    monkeypatch.setattr(bench.bench_burst, "stop", lambda process: None)
    monkeypatch.setattr(bench.bench_burst, "cpu_times", lambda pid: next(cpu))
    figures = bench.floor_server(1, 2, "minimal")
    assert figures == pytest.approx({"user_ms": 0.8, "sys_ms": 0.2, "cpu_ms": 1.0, "per_s": 250.0})


class FakeProcess:
    pid = 0
