"""
The client address of a request, as far as the gateway can trust it (pure).

Behind an ingress or a load balancer every TCP peer is the proxy, so the
failed-authentication limiter would lump every sender together. A proxy
names the client it forwarded for in ``X-Forwarded-For`` or RFC 7239
``Forwarded: for=``; those headers are believed only when the TCP peer is a
trusted proxy (``--trusted-proxy``), and only as far as the chain of trusted
proxies reaches: the answer is the right-most address that is not itself a
trusted proxy. A client may write anything at the left of those headers;
the entries its trusted proxies appended are at the right, so prepending
spoofs nothing.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(value: str) -> Network:
    """
    A trusted-proxy network from ``CIDR`` or a single address; raises
    ``ValueError`` naming the value when it is neither.
    """
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"not an IP network (CIDR) or address: {value!r}") from None


def _address(value: str) -> Address | None:
    """An address from a header entry: bare, ``[v6]``, ``[v6]:port``, ``v4:port``, quoted; else None."""
    text = value.strip().strip('"').strip()
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            return None
        rest = text[close + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
        text = text[1:close]
    elif text.count(":") == 1:
        # IPv4 with a port; a bare IPv6 address has at least two colons.
        text, _, port = text.partition(":")
        if not port.isdigit():
            return None
    if "%" in text:
        return None
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(found, ipaddress.IPv6Address) and found.ipv4_mapped is not None:
        return found.ipv4_mapped
    return found


def _forwarded_for(values: Iterable[str]) -> list[str]:
    """The ``for=`` entries of RFC 7239 ``Forwarded`` header values, in order."""
    found = []
    for value in values:
        for element in value.split(","):
            for pair in element.split(";"):
                name, equals, entry = pair.partition("=")
                if equals and name.strip().lower() == "for":
                    found.append(entry)
    return found


def _x_forwarded_for(values: Iterable[str]) -> list[str]:
    return [entry for value in values for entry in value.split(",")]


def _trusted(address: Address | None, trusted: Sequence[Network]) -> bool:
    return address is not None and any(address.version == net.version and address in net for net in trusted)


def client_address(peer: str, headers: Sequence[tuple[str, str]], trusted: Sequence[Network]) -> str:
    """
    The address to hold a request's sender to.

    ``peer`` is the TCP peer's host; ``headers`` the request's headers as
    (name, value) pairs in order (any case); ``trusted`` the trusted proxy
    networks. When the peer is not trusted (or there are none) the answer is
    ``peer``, whatever the headers say. When it is, ``Forwarded`` (if
    present, else ``X-Forwarded-For``) is read right to left, skipping
    trusted proxies; the first other address is the answer. An entry that is
    not an address (``unknown``, an obfuscated name, garbage) ends the
    chain: nothing left of it can be trusted, so the answer is the last
    trusted hop. Returns the address in its canonical text form.
    """
    peer_address = _address(peer)
    if not _trusted(peer_address, trusted):
        return peer
    assert peer_address is not None
    forwarded = [value for name, value in headers if name.lower() == "forwarded"]
    if forwarded:
        chain = _forwarded_for(forwarded)
    else:
        chain = _x_forwarded_for(value for name, value in headers if name.lower() == "x-forwarded-for")
    answer = peer_address
    for entry in reversed(chain):
        address = _address(entry)
        if address is None:
            break
        answer = address
        if not _trusted(address, trusted):
            break
    return str(answer)


def request_client_address(request: Any, trusted: Sequence[Network]) -> str:
    """``client_address`` for a ``twisted.web`` request (its peer's host and its raw headers)."""
    peer = getattr(request.getClientAddress(), "host", "")
    if not trusted:
        return peer
    headers = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]
    return client_address(peer, headers, trusted)
