"""
Domain errors.

Every layer raises these; ``web.py`` maps them to HTTP statuses in exactly one
place.
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
        return str(self.args[0]) if self.args else "Malformed body"


class InvalidText(BadRequest):
    """
    A part of the request that becomes data (a path segment, a query name or
    value, a header value that is read, a JSON string) is not valid Unicode
    encodable as UTF-8: a lone surrogate from ``%ff`` or ``"\\udc80"``, say.
    ``args[0]`` names the part, never its content.
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
