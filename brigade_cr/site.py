"""
The HTTP site: the access log and, later, the request limits.

Twisted's default access log writes the full URI, which would carry
``?token=`` secrets into the log; this one redacts every query value except
the few known to be harmless.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.web.http import _escape
from twisted.web.server import Request, Site

SAFE_QUERY_NAMES = frozenset({"commit", "registry"})


def redact_uri(uri: bytes) -> str:
    """
    ``uri`` with the value of every query parameter not in
    ``SAFE_QUERY_NAMES`` replaced by ``REDACTED``.
    """
    text = uri.decode("latin-1")
    parts = urlsplit(text)
    if not parts.query:
        return text
    pairs = []
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        shown = value if name in SAFE_QUERY_NAMES else "REDACTED"
        pairs.append(f"{name}={shown}")
    return f"{parts.path}?{'&'.join(pairs)}"


def redacting_log_formatter(timestamp: str, request: Request) -> str:
    """
    A combined-format access log line with the query redacted and the
    ``Referer`` left out (a sender could copy the URL, token and all, there).
    """
    address = request.getClientAddress()
    ip = address.host if isinstance(address, (IPv4Address, IPv6Address)) else "-"
    agent = request.getHeader(b"user-agent") or b"-"
    return '"{ip}" - - {timestamp} "{method} {uri} {protocol}" {code} {length} "-" "{agent}"'.format(
        ip=_escape(ip),
        timestamp=timestamp,
        method=_escape(request.method),
        uri=_escape(redact_uri(request.uri)),
        protocol=_escape(request.clientproto),
        code=request.code,
        length=request.sentLength or "-",
        agent=_escape(agent),
    )


def make_site(resource: Any, reactor: Any, idle_timeout: float = 60.0) -> Site:
    """A ``Site`` serving ``resource`` with the redacting access log."""
    return Site(
        resource,
        logFormatter=redacting_log_formatter,
        timeout=idle_timeout,
        reactor=reactor,
    )
