"""The interpreter's switch interval while the gateway runs (``app/interpreter.py``, ``app/tap.py``)."""

from __future__ import annotations

import sys

import pytest
from twisted.application.service import IServiceCollection

from brigade_cr.app import tap
from brigade_cr.app.interpreter import SWITCH_INTERVAL, SwitchInterval
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
def test_make_service_runs_the_gateway_with_the_switch_interval(
    monkeypatch: pytest.MonkeyPatch, drain_only: bool
) -> None:
    """Both the gateway and the one-shot drain get the ``interpreter`` service beside their own."""
    made = stub_composition(monkeypatch)
    options = tap.Options({})
    options.parseOptions(["--drain-only"] if drain_only else [])
    services = IServiceCollection(tap.makeService(options))
    interpreter = services.getServiceNamed("interpreter")
    assert isinstance(interpreter, SwitchInterval)
    assert interpreter.interval == SWITCH_INTERVAL
    assert made[0] in list(services)
