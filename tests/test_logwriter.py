"""The log's writes gathered once per reactor turn (``app/logwriter.py``) and where ``makeService`` puts them."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from twisted.application.service import IServiceCollection
from twisted.internet.task import Clock
from twisted.logger import Logger

from brigade_cr.app import tap
from brigade_cr.app.logs import LEVELS, observer
from brigade_cr.app.logwriter import GATHER_LIMIT, TurnWriter
from tests.helpers import stub_composition


class RecordingFile(io.StringIO):
    """A text file that remembers each ``write`` call and counts flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[str] = []
        self.flushes = 0
        self.fail = False

    def write(self, text: str) -> int:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.writes.append(text)
        return super().write(text)

    def flush(self) -> None:
        self.flushes += 1


class Threads:
    """Which thread the writer believes it is called from."""

    def __init__(self) -> None:
        self.reactor = True

    def __call__(self) -> bool:
        return self.reactor


def started(out: RecordingFile, threads: Threads | None = None) -> tuple[TurnWriter, Clock]:
    clock = Clock()
    writer = TurnWriter(out, clock, in_reactor_thread=threads or Threads())
    writer.startService()
    return writer, clock


def test_before_the_start_each_write_goes_straight_to_the_file() -> None:
    out = RecordingFile()
    clock = Clock()
    writer = TurnWriter(out, clock, in_reactor_thread=Threads())
    writer.write("one\n")
    writer.flush()
    writer.write("two\n")
    assert out.writes == ["one\n", "two\n"]
    assert out.flushes == 3  # after each write, and the flush asked for
    assert clock.getDelayedCalls() == []


def test_a_turns_lines_are_written_once_when_the_turn_ends_in_order() -> None:
    out = RecordingFile()
    writer, clock = started(out)
    for n in range(3):
        writer.write(f"line {n}\n")
        writer.flush()  # what FileLogObserver does after each event
    assert out.writes == []
    assert out.flushes == 0
    assert len(clock.getDelayedCalls()) == 1  # one call per turn, not per line
    clock.advance(0)
    assert out.writes == ["line 0\nline 1\nline 2\n"]
    assert out.flushes == 1
    writer.write("next turn\n")
    clock.advance(0)
    assert out.writes[-1] == "next turn\n"
    assert clock.getDelayedCalls() == []


def test_lines_reaching_the_limit_are_written_without_waiting_for_the_turn() -> None:
    out = RecordingFile()
    writer, clock = started(out)
    half = "x" * (GATHER_LIMIT // 2 - 1) + "\n"
    writer.write(half)
    assert out.writes == []
    writer.write(half)
    assert out.writes == [half + half]
    writer.write("after\n")
    assert out.writes == [half + half]
    clock.advance(0)
    assert out.writes == [half + half, "after\n"]


def test_a_write_from_another_thread_goes_out_at_once_after_what_was_gathered() -> None:
    out = RecordingFile()
    threads = Threads()
    writer, clock = started(out, threads)
    writer.write("reactor\n")
    threads.reactor = False
    writer.write("thread\n")
    assert out.writes == ["reactor\n", "thread\n"]
    clock.advance(0)  # nothing is left for the turn's end
    assert out.writes == ["reactor\n", "thread\n"]


def test_stopping_writes_what_was_gathered_and_later_writes_go_straight_out() -> None:
    out = RecordingFile()
    writer, clock = started(out)
    writer.write("gathered\n")
    writer.stopService()
    assert out.writes == ["gathered\n"]
    assert clock.getDelayedCalls() == []  # the turn's call was cancelled
    writer.write("while stopping\n")
    assert out.writes == ["gathered\n", "while stopping\n"]


def test_a_failing_write_at_the_turns_end_drops_that_turn_and_the_next_one_is_written() -> None:
    out = RecordingFile()
    writer, clock = started(out)
    writer.write("lost\n")
    out.fail = True
    clock.advance(0)  # does not raise into the reactor
    out.fail = False
    writer.write("kept\n")
    clock.advance(0)
    assert out.writes == ["kept\n"]


def test_an_observer_over_the_writer_writes_whole_lines_per_turn() -> None:
    out = RecordingFile()
    writer, clock = started(out)
    log = Logger(namespace="t", observer=observer(writer, "json", LEVELS["info"]))
    log.info("first {n}", n=1)
    log.info("second {n}", n=2)
    assert out.writes == []
    clock.advance(0)
    (written,) = out.writes
    assert [json.loads(line)["message"] for line in written.splitlines()] == ["first 1", "second 2"]


def test_make_service_logs_through_a_writer_stopped_before_the_gateway(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The observer set for twistd writes through the ``log-writer`` service, over ``--logfile``."""
    made = stub_composition(monkeypatch)
    options = tap.Options({})
    options.parseOptions(["--log-format", "json"])
    path = tmp_path / "gateway.log"
    options.parent = {"logfile": str(path), "nodaemon": 1}  # type: ignore[assignment]
    services = tap.makeService(options)
    writer = IServiceCollection(services).getServiceNamed("log-writer")
    assert isinstance(writer, TurnWriter)
    children = list(IServiceCollection(services))
    # MultiService stops its children last to first.
    assert children.index(writer) > children.index(made[0])
    assert services.observer is not None  # type: ignore[attr-defined]
    Logger(namespace="t", observer=services.observer).info("before the start")  # type: ignore[attr-defined]
    assert json.loads(path.read_text())["message"] == "before the start"
