"""
The one error table: what each domain error is answered, logged and counted
as.

For every class in ``core/errors.py`` it says the HTTP status, the JSON body,
whether the answer carries ``Retry-After`` (and its default), the log line
(if any) and the metric outcome. An error is looked up along its MRO, so a
subclass without a row of its own (``InvalidText`` under ``BadRequest``) is
answered and counted as its parent. The web layer (``web/routes.py``) renders
answers from it; the gateway counts ``brigade_cr_deliveries_total`` outcomes
from it; ``app/metrics.py`` takes its closed set of outcomes from
``OUTCOMES``. Statuses are plain ints: core knows nothing of ``twisted.web``.
"""

from __future__ import annotations

from string import Formatter
from typing import Mapping

import attrs
from twisted.logger import LogLevel

from brigade_cr.core.errors import (
    BackendRejected,
    BackendUnavailable,
    BadRequest,
    InvalidURLText,
    ProjectNotFound,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)


@attrs.frozen
class ErrorAnswer:
    """
    How one class of error is answered: ``status`` with the body
    ``{"status": title}`` (plus ``"reason"``, the error's ``message``, when
    ``with_reason``); a ``Retry-After`` of the error's own ``retry_after``,
    else ``retry_after``, when ``retry_after`` is set; ``connection: close``
    when ``close``; logged at ``log_level`` with ``log_format`` (fields
    ``project_ref``, ``reason``, ``retry_after``, as the format names them;
    with the traceback when ``traceback``), not at all when ``log_level`` is
    None; counted as ``outcome``.
    """

    status: int
    title: str
    outcome: str
    with_reason: bool = False
    retry_after: int | None = None
    close: bool = False
    log_level: LogLevel | None = None
    log_format: str = ""
    traceback: bool = False

    def body(self, error: BaseException) -> dict[str, str]:
        """The JSON object answered for ``error``."""
        body = {"status": self.title}
        if self.with_reason:
            body["reason"] = str(getattr(error, "message", ""))
        return body

    def retry_after_of(self, error: BaseException) -> int | None:
        """The ``Retry-After`` seconds answered for ``error``, or None for no header."""
        if self.retry_after is None:
            return None
        own = getattr(error, "retry_after", None)
        return own if isinstance(own, int) and own else self.retry_after

    def log_fields(self, error: BaseException, project_ref: str) -> dict[str, object]:
        """The fields ``log_format`` names, for ``error`` on a delivery for ``project_ref``."""
        available: dict[str, object] = {
            "project_ref": project_ref,
            "reason": getattr(error, "reason", None),
            "retry_after": self.retry_after_of(error),
        }
        named = {field for _, field, _, _ in Formatter().parse(self.log_format) if field}
        return {name: value for name, value in available.items() if name in named}


# In the order the outcomes are listed (OUTCOMES).
ERROR_ANSWERS: Mapping[type[Exception], ErrorAnswer] = {
    # Unknown project, missing or wrong secret: one answer for all, so that
    # the answer reveals nothing (the gateway logged why). 403, not 401:
    # EventBridge would retry a 401 for a day.
    Unauthorized: ErrorAnswer(403, "Forbidden", "unauthorized"),
    ProjectNotFound: ErrorAnswer(403, "Forbidden", "unauthorized"),
    # The limiter never says less than 1 s; the gateway logged the refusal.
    RateLimited: ErrorAnswer(429, "Too Many Requests", "rate_limited", retry_after=1),
    BadRequest: ErrorAnswer(
        400,
        "Malformed body",
        "malformed",
        with_reason=True,
        log_level=LogLevel.info,
        log_format="Refused a malformed body for {project_ref!r}: {reason}",
    ),
    # The URL itself: answered as the text check in front of Klein answers it.
    InvalidURLText: ErrorAnswer(400, "Bad Request", "malformed", with_reason=True),
    BackendUnavailable: ErrorAnswer(
        503,
        "Service Unavailable",
        "unavailable",
        retry_after=10,
        log_level=LogLevel.warn,
        log_format="Build store unavailable, asked the sender to retry in {retry_after}s: {reason}",
    ),
    # Refused before the gateway sees it: nothing to log per delivery.
    ShuttingDown: ErrorAnswer(503, "Service Unavailable", "unavailable", retry_after=5, close=True),
    BackendRejected: ErrorAnswer(
        502,
        "Build refused by Kubernetes",
        "rejected",
        log_level=LogLevel.error,
        log_format="Build store refused a build: {reason}",
    ),
}

# Anything that is no domain error: a bug.
UNEXPECTED = ErrorAnswer(
    500,
    "Internal Server Error",
    "error",
    log_level=LogLevel.critical,
    log_format="Unexpected error handling a delivery",
    traceback=True,
)

# What a delivery that raised nothing is counted as.
SUCCESS_OUTCOMES = ("built", "duplicate", "queued", "ignored")

# Every outcome ``brigade_cr_deliveries_total`` may carry, a closed set.
OUTCOMES: tuple[str, ...] = SUCCESS_OUTCOMES + tuple(
    dict.fromkeys([*(answer.outcome for answer in ERROR_ANSWERS.values()), UNEXPECTED.outcome])
)


def answer_for(error: BaseException) -> ErrorAnswer:
    """The row for the nearest class of ``error`` in ``ERROR_ANSWERS`` along its MRO, else ``UNEXPECTED``."""
    for klass in type(error).__mro__:
        answer = ERROR_ANSWERS.get(klass)
        if answer is not None:
            return answer
    return UNEXPECTED


def outcome_of(error: BaseException) -> str:
    """The metric outcome of a delivery that failed with ``error``."""
    return answer_for(error).outcome


__all__ = [
    "ERROR_ANSWERS",
    "OUTCOMES",
    "SUCCESS_OUTCOMES",
    "UNEXPECTED",
    "ErrorAnswer",
    "answer_for",
    "outcome_of",
]
