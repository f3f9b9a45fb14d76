"""The guard that keeps the ``slow`` marker honest (tests/slow.py) refuses, and fails the test."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tests.slow import NotMarkedSlow, guarded, is_process_fixture, starts_process


def test_a_process_is_refused_and_fails_the_test() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        with guarded("tests/x.py::test_x", "the test"):
            with pytest.raises(NotMarkedSlow):
                subprocess.run([sys.executable, "-c", "pass"], check=False, timeout=10)
    assert str(failed.value) == (
        "tests/x.py::test_x is not marked slow but starts a process (_execute_child) in the test: "
        "mark it @pytest.mark.slow (see tests/slow.py)"
    )


def test_a_swallowed_refusal_still_fails_the_test() -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        with guarded("tests/x.py::test_x", "setup"):
            try:
                with socket.socket() as listener:
                    listener.bind(("127.0.0.1", 0))
            except Exception:  # the code under test hides the error: the guard does not
                pass
    assert str(failed.value) == (
        "tests/x.py::test_x is not marked slow but opens a real socket (bind) in setup: "
        "mark it @pytest.mark.slow (see tests/slow.py)"
    )


def test_nothing_refused_nothing_failed() -> None:
    with guarded("tests/x.py::test_x", "the test"):
        with socket.socket() as unbound:
            assert unbound.fileno() >= 0


def test_flagged_fixture_functions() -> None:
    def plain() -> None:
        pass

    def flagged() -> None:
        pass

    assert starts_process(flagged) is flagged
    assert (is_process_fixture(flagged), is_process_fixture(plain)) == (True, False)


def test_this_test_is_guarded() -> None:
    """The hooks in tests/conftest.py guard every test that is not slow, this one included."""
    assert (socket.socket.bind.__name__, socket.socket.listen.__name__) == ("refuse", "refuse")
    assert subprocess.Popen._execute_child.__name__ == "refuse"  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_slow_test_is_not_guarded() -> None:
    assert (socket.socket.bind.__name__, socket.socket.listen.__name__) == ("bind", "listen")
