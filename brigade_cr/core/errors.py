"""
Domain errors.

Every layer raises these. What each one is answered (HTTP status, body,
``Retry-After``), logged and counted as is one table, ``core/answers.py``,
read by the web layer and by the gateway's metrics alike.
"""

from __future__ import annotations


class BadRequest(Exception):
    """
    The delivery itself is unacceptable (malformed body, wrong shape).

    ``args[0]`` is a short, fixed explanation safe to return to the sender: it
    never echoes request content.
    """

    @property
    def message(self) -> str:
        """The explanation the sender is given."""
        return str(self.args[0]) if self.args else "Malformed body"

    @property
    def reason(self) -> str:
        """The same as ``message``: nothing in it is secret."""
        return self.message


class InvalidText(BadRequest):
    """
    A part of the request that becomes data (a path segment, a query name or
    value, a header value that is read, a JSON string) is not valid Unicode
    encodable as UTF-8: a lone surrogate from ``%ff`` or ``"\\udc80"``, say.
    ``args[0]`` names the part, never its content.
    """


class InvalidURLText(InvalidText):
    """
    The text of the request's target (its path or query) or its ``Host``
    header is not UTF-8. Unlike text in the body, found after
    authentication, this is a request nobody could route: answered
    ``Bad Request`` rather than ``Malformed body``.
    """


class ProjectNotFound(Exception):
    """
    No Brigade project answers to the reference.

    Raised for a missing Secret and for a ``brigade-*`` Secret that is not of
    type ``brigade.sh/project``: both look the same to a sender.
    """


class BackendUnavailable(Exception):
    """
    The place builds are stored (Kubernetes, a directory) could not be reached
    or failed in a way that may pass: the delivery should be retried.

    ``retry_after`` is the number of seconds a sender should wait, when known.
    """

    def __init__(self, reason: str, retry_after: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ShuttingDown(BackendUnavailable):
    """
    The gateway is stopping (SIGTERM): it takes no new delivery, while those
    in flight finish. A sender should try again in a few seconds, by when a
    replica (or this one, restarted) takes it.
    """

    def __init__(self) -> None:
        super().__init__("shutting down", retry_after=5)


class BackendRejected(Exception):
    """
    The store refused the build for a reason that retrying will not fix
    (Kubernetes 400/403/404/422, or a name taken by different content).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unauthorized(Exception):
    """
    The delivery did not prove knowledge of the project's secret, or names no
    project that could accept it. ``reason`` is for the server's log only:
    senders all get the same answer, so the refusal is no oracle.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RateLimited(Exception):
    """Too many deliveries (or failed authentications): retry after ``retry_after`` seconds."""

    def __init__(self, what: str, retry_after: int) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after
