"""Small helpers for tests: Deferreds that fire without a running reactor, and the tools some tests run."""

from __future__ import annotations

import os
import shutil
from typing import Any, Coroutine, TypeVar

import pytest
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

T = TypeVar("T")


def result_of(value: Deferred[T] | Coroutine[Any, Any, T]) -> T:
    """The result a Deferred (or coroutine) has already produced; fails the test otherwise."""
    deferred = Deferred.fromCoroutine(value) if not isinstance(value, Deferred) else value
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


def failure_of(value: Deferred[Any] | Coroutine[Any, Any, Any]) -> BaseException:
    """The exception a Deferred (or coroutine) has already failed with."""
    deferred = Deferred.fromCoroutine(value) if not isinstance(value, Deferred) else value
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    assert isinstance(results[0], Failure), f"expected a failure, got {results[0]!r}"
    assert results[0].value is not None
    return results[0].value


def promtool() -> str:
    """
    The path of ``promtool`` (Debian's prometheus package; .ci/run installs
    it). Missing, it fails the test when ``CI`` is set, else skips it.
    """
    path = shutil.which("promtool")
    if path is None:
        message = "promtool is not on PATH: install Debian's prometheus package (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI is set, so this is a failure", pytrace=False)
        pytest.skip(message)
    return path
