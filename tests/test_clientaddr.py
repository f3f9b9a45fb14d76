"""The client address of a request: forwarded headers count only from trusted proxies."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from brigade_cr.web.clientaddr import Network, client_address, parse_network, request_client_address

PODS = ipaddress.ip_network("10.244.0.0/16")
V6 = ipaddress.ip_network("fd00::/8")
TRUSTED: list[Network] = [PODS, V6]


@pytest.mark.parametrize(
    ("peer", "headers", "expected"),
    [
        # An untrusted peer is the answer, whatever it claims.
        ("203.0.113.7", [("X-Forwarded-For", "198.51.100.1")], "203.0.113.7"),
        ("203.0.113.7", [("Forwarded", "for=198.51.100.1")], "203.0.113.7"),
        # A trusted peer without headers is the answer.
        ("10.244.1.2", [], "10.244.1.2"),
        # One hop.
        ("10.244.1.2", [("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
        ("10.244.1.2", [("x-forwarded-for", " 198.51.100.1 ")], "198.51.100.1"),
        # A client prepending a spoofed address gets its own, appended by the proxy.
        ("10.244.1.2", [("X-Forwarded-For", "192.0.2.66, 198.51.100.1")], "198.51.100.1"),
        # Trusted hops at the right are skipped.
        ("10.244.1.2", [("X-Forwarded-For", "192.0.2.66, 198.51.100.1, 10.244.9.9")], "198.51.100.1"),
        # Several header lines are one list, in order.
        ("10.244.1.2", [("X-Forwarded-For", "192.0.2.66"), ("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
        # Only trusted hops: the left-most of them.
        ("10.244.1.2", [("X-Forwarded-For", "10.244.3.3, 10.244.4.4")], "10.244.3.3"),
        # Garbage ends the chain at the last trusted hop.
        ("10.244.1.2", [("X-Forwarded-For", "198.51.100.1, not-an-address")], "10.244.1.2"),
        ("10.244.1.2", [("X-Forwarded-For", "198.51.100.1, garbage, 10.244.5.5")], "10.244.5.5"),
        ("10.244.1.2", [("X-Forwarded-For", "")], "10.244.1.2"),
        ("10.244.1.2", [("X-Forwarded-For", "1.2.3.4.5")], "10.244.1.2"),
        # Ports on IPv4 entries.
        ("10.244.1.2", [("X-Forwarded-For", "198.51.100.1:4711")], "198.51.100.1"),
        ("10.244.1.2", [("X-Forwarded-For", "198.51.100.1:port")], "10.244.1.2"),
        # IPv6, bare and bracketed with a port; canonical form.
        ("10.244.1.2", [("X-Forwarded-For", "2001:DB8::0:1")], "2001:db8::1"),
        ("10.244.1.2", [("X-Forwarded-For", "[2001:db8::1]:443")], "2001:db8::1"),
        ("fd00::5", [("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
        ("fd00::5", [("X-Forwarded-For", "2001:db8::1, fd00::7")], "2001:db8::1"),
        # IPv4-mapped IPv6 is the IPv4 address (a dual-stack listener's peer).
        ("::ffff:10.244.1.2", [("X-Forwarded-For", "198.51.100.1")], "198.51.100.1"),
        ("10.244.1.2", [("X-Forwarded-For", "::ffff:198.51.100.1")], "198.51.100.1"),
        # RFC 7239 Forwarded: quoted, bracketed, ports, other parameters, several elements.
        ("10.244.1.2", [("Forwarded", "for=198.51.100.1")], "198.51.100.1"),
        ("10.244.1.2", [("Forwarded", 'For="198.51.100.1:8080";proto=https;by=10.244.1.2')], "198.51.100.1"),
        ("10.244.1.2", [("Forwarded", 'for="[2001:db8:cafe::17]:4711"')], "2001:db8:cafe::17"),
        ("10.244.1.2", [("Forwarded", 'for="[2001:db8:cafe::17]"')], "2001:db8:cafe::17"),
        ("10.244.1.2", [("Forwarded", "for=192.0.2.66, for=198.51.100.1;proto=http")], "198.51.100.1"),
        (
            "10.244.1.2",
            [("Forwarded", "for=192.0.2.66"), ("Forwarded", "for=198.51.100.1, for=10.244.2.2")],
            "198.51.100.1",
        ),
        # Obfuscated identifiers and "unknown" end the chain.
        ("10.244.1.2", [("Forwarded", "for=198.51.100.1, for=unknown")], "10.244.1.2"),
        ("10.244.1.2", [("Forwarded", "for=_hidden")], "10.244.1.2"),
        ("10.244.1.2", [("Forwarded", 'for="[2001:db8::1"')], "10.244.1.2"),
        ("10.244.1.2", [("Forwarded", 'for="[2001:db8::1]x"')], "10.244.1.2"),
        ("10.244.1.2", [("Forwarded", "proto=https")], "10.244.1.2"),
        # Forwarded wins over X-Forwarded-For when both are present.
        ("10.244.1.2", [("X-Forwarded-For", "192.0.2.66"), ("Forwarded", "for=198.51.100.1")], "198.51.100.1"),
        # A zone index is not an address.
        ("10.244.1.2", [("X-Forwarded-For", "fe80::1%eth0")], "10.244.1.2"),
        # A peer that is not an address at all (a UNIX socket) is kept as it is.
        ("", [("X-Forwarded-For", "198.51.100.1")], ""),
    ],
)
def test_client_address(peer: str, headers: list[tuple[str, str]], expected: str) -> None:
    """The exact client address for each peer and header combination."""
    assert client_address(peer, headers, TRUSTED) == expected


def test_no_trusted_proxies_means_the_peer() -> None:
    """Without trusted proxies the headers are never read."""
    assert client_address("10.244.1.2", [("X-Forwarded-For", "198.51.100.1")], []) == "10.244.1.2"


def test_parse_network() -> None:
    """CIDRs and single addresses parse (host bits allowed); anything else is a ValueError naming it."""
    assert parse_network("10.244.0.0/16") == PODS
    assert parse_network("10.244.3.4/16") == PODS
    assert parse_network(" 192.0.2.1 ") == ipaddress.ip_network("192.0.2.1/32")
    assert parse_network("fd00::/8") == V6
    for bad in ("", "10.0.0.0/33", "example.com", "10.0.0.0/8/8"):
        with pytest.raises(ValueError, match="not an IP network"):
            parse_network(bad)


@given(
    spoofed=st.lists(st.text(alphabet="0123456789abcdef.:[], ", max_size=20), max_size=4),
    client=st.ip_addresses(v=4).filter(lambda a: a not in PODS),
)
def test_prepending_never_changes_the_answer(spoofed: list[str], client: ipaddress.IPv4Address) -> None:
    """Whatever a client writes before the entry its trusted proxy appends, the answer is its own address."""
    headers = [("X-Forwarded-For", ", ".join([*spoofed, str(client)]))]
    assert client_address("10.244.1.2", headers, TRUSTED) == str(client)
    forwarded = [("Forwarded", ", ".join([*(f"for={s}" for s in spoofed if "," not in s), f"for={client}"]))]
    assert client_address("10.244.1.2", forwarded, TRUSTED) == str(client)


@given(headers=st.lists(st.tuples(st.sampled_from(["X-Forwarded-For", "Forwarded"]), st.text(max_size=40)), max_size=4))
def test_never_raises_and_untrusted_peer_is_kept(headers: list[tuple[str, str]]) -> None:
    """Any header text gives an answer; from an untrusted peer the answer is the peer."""
    assert client_address("203.0.113.7", headers, TRUSTED) == "203.0.113.7"
    answer = client_address("10.244.1.2", headers, TRUSTED)
    assert ipaddress.ip_address(answer)


def test_request_client_address() -> None:
    """The twisted.web adapter reads the request's peer and raw headers."""
    request = DummyRequest([b""])
    request.client = IPv4Address("TCP", "10.244.1.2", 1234)
    request.requestHeaders.addRawHeader(b"X-Forwarded-For", b"192.0.2.66, 198.51.100.1")
    assert request_client_address(request, TRUSTED) == "198.51.100.1"
    assert request_client_address(request, []) == "10.244.1.2"
