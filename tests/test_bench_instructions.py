"""``bench/bench_instructions.py``'s measured process still drives the stack (it asserts no speed)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.helpers import load_bench


def load(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    return load_bench(monkeypatch, "bench_instructions")


@pytest.mark.parametrize("spool", [True, False])
def test_the_child_sends_distinct_deliveries_all_answered(monkeypatch: pytest.MonkeyPatch, spool: bool) -> None:
    """Every delivery of the measured run is answered 2xx (else it exits saying how many were)."""
    monkeypatch.setattr(os, "fsync", os.fsync)  # the child stubs it: put it back afterwards
    bench = load(monkeypatch)
    bench.child(3, spool)


def test_too_few_answers_are_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run whose deliveries are not all answered 2xx stops with the count, not a figure."""
    monkeypatch.setattr(os, "fsync", os.fsync)
    bench = load(monkeypatch)
    monkeypatch.setattr(bench, "WARM_UP", 1)
    # Bodies that are not JSON: each one is answered 400.
    monkeypatch.setattr(bench, "json", SimpleNamespace(dumps=lambda value: "{not json"))
    with pytest.raises(SystemExit, match=r"bench: 0 of 3 deliveries answered 2xx"):
        bench.child(2, True)


def test_the_baseline_child_answers_the_same_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--baseline`` sends the gateway's requests to the bench's bare resource, and every one is answered."""
    bench = load(monkeypatch)
    sent: list[bytes] = []
    delivery = bench.delivery

    def recorded(n: int) -> bytes:
        sent.append(delivery(n))
        return sent[-1]

    monkeypatch.setattr(bench, "delivery", recorded)
    bench.baseline_child(3)
    assert len(sent) == bench.WARM_UP + 3 and len(set(sent)) == len(sent)
    assert all(request.startswith(b"POST /events/webhook/acme/webapp?token=") for request in sent)


def test_the_baseline_child_reports_unanswered_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bare resource that answered no 2xx would stop the run with the count, not give a figure."""
    bench = load(monkeypatch)
    monkeypatch.setattr(bench, "WARM_UP", 1)
    # On sys.path since load() ran the bench, which puts bench/ there.
    baseline_server = importlib.import_module("baseline_server")

    def refuse(self: object, request: Any) -> bytes:
        request.setResponseCode(500)
        return b""

    monkeypatch.setattr(baseline_server.Bare, "render_POST", refuse)
    with pytest.raises(SystemExit, match=r"bench: 0 of 3 deliveries answered 2xx"):
        bench.baseline_child(2)


def test_the_memory_store_and_the_baseline_are_one_or_the_other(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Asked for both, the bench refuses rather than silently counting one of them."""
    bench = load(monkeypatch)
    with pytest.raises(SystemExit):
        bench.main(["--no-spool", "--baseline", "--child", "1"])
    assert "not allowed with argument" in capsys.readouterr().err
