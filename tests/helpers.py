"""Small helpers for tests: Deferreds that fire without a running reactor, the tools some tests run, a kubeconfig."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Coroutine, TypeVar

import pytest
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from brigade_cr.app import tap
from brigade_cr.core.values import Build
from brigade_cr.stores.spool.record import decode_record, parse_batch_filename, parse_record_filename, split_batch

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


MINIMAL_KUBECONFIG = (
    "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
    "clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443', insecure-skip-tls-verify: true}}]\n"
    "users: [{name: u, user: {token: t0k3n}}]\n"
    "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
)


def write_minimal_kubeconfig(path: Path) -> Path:
    """A kubeconfig at ``path`` naming a server at https://127.0.0.1:6443 (never dialled) and a token; ``path``."""
    path.write_text(MINIMAL_KUBECONFIG)
    return path


def stub_composition(monkeypatch: pytest.MonkeyPatch) -> list[MultiService]:
    """
    ``tap.makeService`` with its gateway and its drain each an empty
    ``MultiService``: the list the ones made are appended to.
    """
    made: list[MultiService] = []

    def compose(options: Any, reactor: Any, environ: Any) -> MultiService:
        made.append(MultiService())
        return made[-1]

    monkeypatch.setattr(tap, "make_service", compose)
    monkeypatch.setattr(tap, "make_drain_service", compose)
    return made


def load_bench(monkeypatch: pytest.MonkeyPatch, name: str) -> ModuleType:
    """The module ``bench/<name>.py``, loaded afresh; the ``sys.path`` entries it adds are undone after the test."""
    # A bench puts the checkout (and bench/) first on sys.path; the tests run the installed package.
    monkeypatch.setattr(sys, "path", list(sys.path))
    path = Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def spool_records(directory: Path) -> list[tuple[int, str, Build]]:
    """
    Every record in the spool ``directory`` as ``(sequence, build name,
    build)``, in sequence order: record files and the records of batch files
    alike. Fails the test when a record file is damaged or a batch file has
    a damaged stretch.
    """
    found: list[tuple[int, str, Build]] = []
    for filename in os.listdir(directory):
        path = directory / filename
        first = parse_batch_filename(filename)
        if first is not None:
            slots, damaged = split_batch(path.read_bytes())
            assert damaged == [], f"{filename} has damaged stretches {damaged}"
            found.extend((first + slot.index, slot.build.name, slot.build) for slot in slots)
            continue
        parsed = parse_record_filename(filename)
        if parsed is not None:
            found.append((parsed[0], parsed[1], decode_record(path.read_bytes(), parsed[1])))
    return sorted(found, key=lambda record: record[0])
