"""
The one error table (core/answers.py): each domain error's answer, log line
and metric outcome, looked up along the MRO, and the web layer and the
metrics reading the same rows.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from brigade_cr.app.metrics import GatewayMetrics
from brigade_cr.core.answers import ERROR_ANSWERS, OUTCOMES, UNEXPECTED, answer_for, outcome_of
from brigade_cr.core.contract import project_id
from brigade_cr.core.errors import (
    BackendRejected,
    BackendUnavailable,
    BadRequest,
    InvalidText,
    InvalidURLText,
    ProjectNotFound,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)
from brigade_cr.core.gateway import Gateway
from brigade_cr.core.values import Delivery
from brigade_cr.testing.memory import MemoryBuilds, MemoryProjects
from tests.backend_contract import project_secret
from tests.helpers import failure_of
from tests.wire import Wire, request

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


class _StoreHiccup(BackendUnavailable):
    """A subclass with no row of its own."""


@pytest.mark.parametrize(
    ("error", "status", "body", "retry_after", "close", "outcome"),
    [
        (Unauthorized("wrong token"), 403, {"status": "Forbidden"}, None, False, "unauthorized"),
        (ProjectNotFound(), 403, {"status": "Forbidden"}, None, False, "unauthorized"),
        (RateLimited("failed authentications", 42), 429, {"status": "Too Many Requests"}, 42, False, "rate_limited"),
        (
            BadRequest("not an object"),
            400,
            {"status": "Malformed body", "reason": "not an object"},
            None,
            False,
            "malformed",
        ),
        (InvalidText("a string"), 400, {"status": "Malformed body", "reason": "a string"}, None, False, "malformed"),
        (InvalidURLText("the path"), 400, {"status": "Bad Request", "reason": "the path"}, None, False, "malformed"),
        (BackendUnavailable("down"), 503, {"status": "Service Unavailable"}, 10, False, "unavailable"),
        (BackendUnavailable("down", retry_after=7), 503, {"status": "Service Unavailable"}, 7, False, "unavailable"),
        (_StoreHiccup("down", retry_after=3), 503, {"status": "Service Unavailable"}, 3, False, "unavailable"),
        (ShuttingDown(), 503, {"status": "Service Unavailable"}, 5, True, "unavailable"),
        (BackendRejected("422"), 502, {"status": "Build refused by Kubernetes"}, None, False, "rejected"),
        (ValueError("bug"), 500, {"status": "Internal Server Error"}, None, False, "error"),
    ],
)
def test_each_error_is_answered_and_counted(
    error: Exception, status: int, body: dict[str, str], retry_after: int | None, close: bool, outcome: str
) -> None:
    """Every domain error (and a subclass without a row of its own) has its status, body, Retry-After and outcome."""
    answer = answer_for(error)
    assert (answer.status, answer.body(error), answer.retry_after_of(error), answer.close) == (
        status,
        body,
        retry_after,
        close,
    )
    assert outcome_of(error) == outcome


def test_lookup_follows_the_mro() -> None:
    """The nearest class with a row wins: a subclass gets its parent's row unless it has its own."""
    assert answer_for(InvalidText("x")) is ERROR_ANSWERS[BadRequest]
    assert answer_for(InvalidURLText("x")) is ERROR_ANSWERS[InvalidURLText]
    assert answer_for(_StoreHiccup("x")) is ERROR_ANSWERS[BackendUnavailable]
    assert answer_for(ShuttingDown()) is ERROR_ANSWERS[ShuttingDown]
    assert answer_for(KeyError("x")) is UNEXPECTED


def test_outcomes_are_the_closed_set() -> None:
    """The metric's outcomes: the four of success, then the table's, then ``error``, each once."""
    assert OUTCOMES == (
        "built",
        "duplicate",
        "queued",
        "ignored",
        "unauthorized",
        "rate_limited",
        "malformed",
        "unavailable",
        "rejected",
        "error",
    )


def test_log_lines() -> None:
    """Each row logs what it says, with exactly the fields its format names; refusals of senders log nothing here."""
    bad = answer_for(BadRequest("not an object"))
    assert (bad.log_level, bad.log_format) == (LogLevel.info, "Refused a malformed body for {project_ref!r}: {reason}")
    assert bad.log_fields(BadRequest("not an object"), "acme") == {"project_ref": "acme", "reason": "not an object"}
    down = BackendUnavailable("connection refused", retry_after=4)
    assert answer_for(down).log_level == LogLevel.warn
    assert answer_for(down).log_fields(down, "acme") == {"reason": "connection refused", "retry_after": 4}
    rejected = BackendRejected("422 Invalid")
    assert answer_for(rejected).log_level == LogLevel.error
    assert answer_for(rejected).log_fields(rejected, "acme") == {"reason": "422 Invalid"}
    assert (UNEXPECTED.log_level, UNEXPECTED.traceback) == (LogLevel.critical, True)
    for quiet in (Unauthorized("x"), ProjectNotFound(), RateLimited("x", 1), InvalidURLText("x"), ShuttingDown()):
        assert answer_for(quiet).log_level is None


def test_text_in_the_body_is_counted_as_malformed() -> None:
    """
    A lone surrogate in the body is ``InvalidText``, a ``BadRequest``: counted
    ``malformed`` like its parent (the exact-type table counted it ``error``).
    """
    projects = MemoryProjects()
    projects.add(project_secret("solo", crGatewaySecret=b"answers-secret"))
    metrics = GatewayMetrics()
    gateway = Gateway(projects, MemoryBuilds(), Clock(), metrics=metrics)
    body = b'{"a": "\\udc80"}'
    delivery = Delivery("solo", "", body, NOW, {}, [("token", "answers-secret")], source="192.0.2.1")
    assert isinstance(failure_of(gateway.receive(delivery)), InvalidText)
    sample = metrics.registry.get_sample_value
    assert sample("brigade_cr_deliveries_total", {"format": "none", "outcome": "malformed"}) == 1
    assert sample("brigade_cr_deliveries_total", {"format": "none", "outcome": "error"}) is None
    assert sample("brigade_cr_builds_total", {"project": project_id("solo"), "event_type": "image_push"}) is None


def test_shutting_down_answer_comes_from_the_table() -> None:
    """
    Once shutting down, a delivery gets the ShuttingDown row on the wire:
    503, ``Retry-After: 5``, ``Connection: close``, and nothing is stored.
    """
    with Wire() as wire:
        wire.webhooks.shutting_down = True
        responses, _ = wire.exchange(request("POST", b"/events/webhook/solo", b"{}", bearer=True))
        assert len(responses) == 1
        response = responses[0]
        assert response.status_line == b"HTTP/1.1 503 Service Unavailable"
        assert [(name, value) for name, value in response.headers if name not in (b"Date", b"Server")] == [
            (b"Retry-After", b"5"),
            (b"Connection", b"close"),
            (b"Content-Type", b"application/json"),
            (b"Cache-Control", b"no-store"),
            (b"Transfer-Encoding", b"chunked"),
        ]
        assert response.body == b'{"status": "Service Unavailable"}\n'
        assert wire.inner.secrets == {}
