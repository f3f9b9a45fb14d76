"""The interpreter's switch interval and collector while the gateway runs (``app/interpreter.py``, ``app/tap.py``)."""

from __future__ import annotations

import gc
import sys

import pytest
from twisted.application.service import IServiceCollection

from brigade_cr.app import tap
from brigade_cr.app.interpreter import SWITCH_INTERVAL, YOUNG_THRESHOLD, Collector, SwitchInterval
from tests.helpers import stub_composition


class FakeInterpreter:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.sets: list[float] = []

    def get(self) -> float:
        return self.interval

    def set(self, interval: float) -> None:
        self.sets.append(interval)
        self.interval = interval


class FakeCollector:
    """The parts of the ``gc`` module ``Collector`` uses, recording each call in order."""

    def __init__(self, threshold: tuple[int, int, int]) -> None:
        self.threshold = threshold
        self.calls: list[tuple[object, ...]] = []

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append(("set_threshold", *threshold))
        self.threshold = (threshold[0], threshold[1], threshold[2])

    def collect(self) -> int:
        self.calls.append(("collect",))
        return 0

    def freeze(self) -> None:
        self.calls.append(("freeze",))

    def unfreeze(self) -> None:
        self.calls.append(("unfreeze",))


def test_the_collector_freezes_the_start_up_heap_then_raises_the_young_threshold() -> None:
    collector = FakeCollector((700, 10, 10))
    service = Collector(collector=collector)  # type: ignore[arg-type]
    assert collector.calls == []  # nothing changes before the start
    service.startService()
    assert service.running
    # Collected before the freeze: garbage frozen would never be freed.
    assert collector.calls == [("collect",), ("freeze",), ("set_threshold", YOUNG_THRESHOLD, 10, 10)]
    assert YOUNG_THRESHOLD == 2_000
    service.stopService()
    assert not service.running
    assert collector.calls[3:] == [("set_threshold", 700, 10, 10), ("unfreeze",)]
    service.stopService()  # a second stop changes nothing
    assert len(collector.calls) == 5


def test_the_real_collector_is_restored() -> None:
    before = gc.get_threshold()
    service = Collector(young=before[0] * 3)
    service.startService()
    try:
        assert gc.get_threshold() == (before[0] * 3, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        service.stopService()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_interval_is_set_while_running_and_the_one_found_put_back() -> None:
    interpreter = FakeInterpreter(0.005)
    service = SwitchInterval(get=interpreter.get, set=interpreter.set)
    assert interpreter.sets == []  # nothing changes before the start
    service.startService()
    assert interpreter.interval == SWITCH_INTERVAL == 0.001
    assert service.running
    service.stopService()
    assert interpreter.sets == [0.001, 0.005]
    assert not service.running
    service.stopService()  # a second stop changes nothing
    assert interpreter.sets == [0.001, 0.005]


def test_the_real_interval_is_restored() -> None:
    before = sys.getswitchinterval()
    service = SwitchInterval(interval=before / 2)
    service.startService()
    try:
        assert sys.getswitchinterval() == pytest.approx(before / 2)
    finally:
        service.stopService()
    assert sys.getswitchinterval() == pytest.approx(before)


@pytest.mark.parametrize("drain_only", [False, True])
def test_make_service_runs_the_gateway_with_the_switch_interval_and_the_collector(
    monkeypatch: pytest.MonkeyPatch, drain_only: bool
) -> None:
    """Both the gateway and the one-shot drain get the ``interpreter`` and ``collector`` services beside their own."""
    made = stub_composition(monkeypatch)
    options = tap.Options({})
    options.parseOptions(["--drain-only"] if drain_only else [])
    services = IServiceCollection(tap.makeService(options))
    interpreter = services.getServiceNamed("interpreter")
    assert isinstance(interpreter, SwitchInterval)
    assert interpreter.interval == SWITCH_INTERVAL
    assert made[0] in list(services)
    # The collector comes last: it freezes what everything before it made.
    collector = services.getServiceNamed("collector")
    assert isinstance(collector, Collector)
    assert collector.young == YOUNG_THRESHOLD
    assert list(services)[-1] is collector
